"""Which files of an existing folder mechunlearn wrote: the ownership rule behind ``outputs``.

An output folder of ours holds ``.mechunlearn.json`` (format ``mechunlearn-output``) with

- ``kind``: what the output is (``"directions"``, ``"featurestore"``, ...);
- ``files``: every file the output wrote (relative paths);
- ``patterns``: glob patterns of files it may add later (``"shard_*.safetensors"``); a pattern
  matches paths with as many ``/`` as itself, so ``shard_*`` never reaches into a sub-folder;
- ``nested``: names of sub-folders that are whole outputs the output itself writes (a sharded
  store's per-rank sub-stores ``rank_00of02``, ...); each is judged by its own manifest.

A file is ours only if the manifest names it, a pattern matches it, or it lies in a listed
nested output and is that output's own. A sub-folder holding a manifest of ours that the
parent does not list is **not** part of the parent: it is another output (e.g. the user's
FeatureStore written into ``OUT/sub``), so its files count as foreign and block replacing the
parent (a new-user run lost such a store when ``OUT`` was replaced with ``--overwrite``).

Compatibility: a sharded store written by the previous release lists no ``nested``; its rank
sub-stores are recognised by exactly what the library wrote (:data:`UNLISTED_NESTED`): the
name ``rank_{r:02d}of{w:02d}`` with ``r < w``, ``w`` equal to the ``world_size`` in the store's
own ``manifest.json``, and a ``featurestore`` manifest of ours in the sub-folder. Anything else
in such a store is foreign.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MANIFEST = ".mechunlearn.json"
FORMAT = "mechunlearn-output"

#: ``legacy(folder)`` lists the files an older mechunlearn wrote into ``folder`` (before
#: manifests existed), or returns ``None`` if ``folder`` is not such an output.
Legacy = Callable[[Path], Iterable[str] | None]


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``{}`` if it is missing, unreadable or not an object)."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """Our manifest in ``folder``, or ``None`` if there is none (or it is not ours)."""
    m = read_json(Path(folder) / MANIFEST)
    return m if m.get("format") == FORMAT else None


def files(folder: Path) -> list[str]:
    """Every file and symbolic link under ``folder``, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


def matches(path: str, patterns: Iterable[str]) -> bool:
    """``path`` matches one of ``patterns`` at the same folder depth."""
    return any(fnmatch.fnmatch(path, p) and path.count("/") == p.count("/") for p in patterns)


_RANK = re.compile(r"rank_(\d{2,})of(\d{2,})")


def _sharded_rank(parent: Path, sub: Path) -> bool:
    """``sub`` is a rank sub-store exactly as the previous release wrote it into ``parent``."""
    m = _RANK.fullmatch(sub.name)
    if m is None:
        return False
    r, w = int(m[1]), int(m[2])
    own = read_manifest(sub)
    return (sub.name == f"rank_{r:02d}of{w:02d}" and r < w
            and read_json(parent / "manifest.json").get("world_size") == w
            and own is not None and own.get("kind") == "featurestore")


#: parent kind -> recogniser of the nested outputs an older release wrote without listing
#: them (used only when the parent's manifest has no ``nested`` key)
UNLISTED_NESTED: dict[str, Callable[[Path, Path], bool]] = {"sharded-store": _sharded_rank}


def is_nested(parent: Path, manifest: dict[str, Any], sub: Path) -> bool:
    """``sub`` (a sub-folder of ``parent``) is a nested output the parent wrote."""
    if "nested" in manifest:
        listed = manifest["nested"]
        return isinstance(listed, list) and sub.name in listed
    rule = UNLISTED_NESTED.get(str(manifest.get("kind")))
    return rule is not None and rule(parent, sub)


def foreign(folder: Path, legacy: Legacy | None = None) -> tuple[str | None, list[str]]:
    """``(kind, files we did not write)`` of an existing folder (kind ``None``: not ours).

    ``legacy`` recognises an output written before manifests existed (see :data:`Legacy`);
    kind ``"legacy"`` then. Nested outputs are ours only as the module doc says.
    """
    man = read_manifest(folder)
    if man is not None:
        kind: str | None = str(man.get("kind"))
        owned, patterns = set(man.get("files", [])), list(man.get("patterns", []))
    else:
        listed = legacy(folder) if legacy is not None else None
        if listed is None:
            return None, files(folder)
        kind, owned, patterns, man = "legacy", set(listed), [], {"nested": []}
    owned.add(MANIFEST)
    out: list[str] = []
    for entry in sorted(folder.iterdir()):
        rel = entry.name
        if entry.is_dir() and not entry.is_symlink():
            if is_nested(folder, man, entry) and read_manifest(entry) is not None:
                out += [f"{rel}/{f}" for f in foreign(entry)[1]]
                continue
            out += [p for p in (f"{rel}/{f}" for f in files(entry))
                    if p not in owned and not matches(p, patterns)]
        elif rel not in owned and not matches(rel, patterns):
            out.append(rel)
    return kind, out


def nested_outputs(folder: Path, found: Iterable[str]) -> list[tuple[str, str]]:
    """``(sub-folder, kind)`` of the separate outputs of ours among the foreign files
    ``found`` of ``folder`` (their manifests are among them), outermost first."""
    subs = sorted({str(Path(f).parent) for f in found
                   if Path(f).name == MANIFEST and str(Path(f).parent) != "."})
    out: list[tuple[str, str]] = []
    for s in subs:
        m = read_manifest(folder / s)
        if m is not None and not any(s.startswith(o + "/") for o, _ in out):
            out.append((s, str(m.get("kind"))))
    return out
