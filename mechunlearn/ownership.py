"""Which files and folders of an existing folder mechunlearn wrote: the rule behind ``outputs``.

An output folder of ours holds ``.mechunlearn.json`` (format ``mechunlearn-output``) with

- ``kind``: what the output is (``"directions"``, ``"featurestore"``, ...);
- ``files``: every file the output wrote (relative paths);
- ``dirs``: every sub-folder the output made, empty or not (a report's ``figures/`` stays
  empty when it has no figure), so a user's folder inside, even an empty one made by
  ``mkdir report/my_notes``, is told apart from ours and blocks a replacement;
- ``patterns``: glob patterns of files it may add later (``"shard_*.safetensors"``); a pattern
  matches paths with as many ``/`` as itself, so ``shard_*`` never reaches into a sub-folder;
  the folders of a pattern (``.rank_*.tmp-*`` of ``.rank_*.tmp-*/*``) are ours too;
- ``nested``: names of sub-folders that are whole outputs the output itself writes (a sharded
  store's per-rank sub-stores ``rank_00of02``, ...); each is judged by its own manifest.

A file is ours only if the manifest names it, a pattern matches it, or it lies in a listed
nested output and is that output's own. A folder is ours only if ``dirs`` lists it, it holds a
file the manifest names, it is a folder of a pattern, or it is a listed nested output. A
sub-folder holding a manifest of ours that the parent does not list is **not** part of the
parent: it is another output (e.g. the user's FeatureStore written into ``OUT/sub``), so its
files count as foreign and block replacing the parent (a new-user run lost such a store when
``OUT`` was replaced with ``--overwrite``). Writing a new one there is refused up front
(:func:`enclosing`, used by ``outputs.check_destination``); only listed nested outputs may be.

Compatibility with the previous release:

- Its manifests list no ``dirs``. Such an output owns the folders that hold a file it lists
  and, when they are empty, only the folders its kind always made (:data:`UNLISTED_DIRS`: a
  report's ``figures`` and ``data``, the only writer that made a folder it might leave
  empty). Any other folder, empty or not, is the user's: the replacement is refused and the
  message says so (an earlier release did not record its folders; move the folder away, or
  delete it by hand if it is not yours). Nothing of the user's can be deleted by this rule;
  the cost is a refusal for a folder the old release made that is not in the table.
- Its sharded stores list no ``nested``; their rank sub-stores are recognised by exactly what
  the library wrote (:data:`UNLISTED_NESTED`): the name ``rank_{r:02d}of{w:02d}`` with
  ``r < w``, ``w`` equal to the ``world_size`` in the store's own ``manifest.json``, and a
  ``featurestore`` manifest of ours in the sub-folder. Anything else in such a store is
  foreign.
- An output written before manifests existed (recognised by a :data:`Legacy` function) owns
  the folders holding the files it lists, nothing else.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mechunlearn.errors import OutputExistsError

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


def folders(folder: Path) -> list[str]:
    """Every sub-folder under ``folder`` (symbolic links excluded), as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_dir() and not p.is_symlink())


def _parents(paths: Iterable[str]) -> set[str]:
    """Every folder that holds one of the relative ``paths`` (``a/b/c`` -> ``a``, ``a/b``)."""
    out: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def matches(path: str, patterns: Iterable[str]) -> bool:
    """``path`` matches one of ``patterns`` at the same folder depth."""
    return any(fnmatch.fnmatch(path, p) and path.count("/") == p.count("/") for p in patterns)


_RANK = re.compile(r"rank_(\d{2,})of(\d{2,})")


def _rank_name(parent: Path, name: str) -> bool:
    """``name`` is a rank sub-store's name as the previous release wrote it into sharded store
    ``parent``: ``rank_{r:02d}of{w:02d}``, ``r < w``, ``w`` its ``manifest.json`` world size."""
    m = _RANK.fullmatch(name)
    if m is None:
        return False
    r, w = int(m[1]), int(m[2])
    return (name == f"rank_{r:02d}of{w:02d}" and r < w
            and read_json(parent / "manifest.json").get("world_size") == w)


def _sharded_rank(parent: Path, sub: Path) -> bool:
    """``sub`` is a rank sub-store exactly as the previous release wrote it into ``parent``."""
    own = read_manifest(sub)
    return (_rank_name(parent, sub.name)
            and own is not None and own.get("kind") == "featurestore")


#: parent kind -> recogniser of the nested outputs an older release wrote without listing
#: them (used only when the parent's manifest has no ``nested`` key)
UNLISTED_NESTED: dict[str, Callable[[Path, Path], bool]] = {"sharded-store": _sharded_rank}
#: the same, by name only (the sub-store may not exist yet): where such a parent writes them
UNLISTED_NESTED_NAMES: dict[str, Callable[[Path, str], bool]] = {"sharded-store": _rank_name}


#: kind -> the folders an output of that kind made in the previous release, whose manifests list
#: no ``dirs`` (used only then): ``Report.write`` always made ``figures`` and ``data``, empty
#: when the report had no figure or table. No other writer made a folder it could leave empty.
UNLISTED_DIRS: dict[str, tuple[str, ...]] = {"report": ("figures", "data")}


def lists_dirs(folder: Path) -> bool:
    """``folder``'s manifest lists the folders it made (``False``: none, or an earlier release's
    manifest, or an output from before manifests; see the module doc)."""
    m = read_manifest(folder)
    return m is not None and isinstance(m.get("dirs"), list)


def _own_dirs(manifest: dict[str, Any], owned: set[str]) -> set[str]:
    """The folders ``manifest`` makes ours: listed, holding a listed file, or (previous
    release, no ``dirs`` key) the kind's :data:`UNLISTED_DIRS`."""
    if "dirs" in manifest:
        listed = manifest["dirs"]
    else:
        listed = UNLISTED_DIRS.get(str(manifest.get("kind")), ())
    if not isinstance(listed, (list, tuple)):  # corrupt: list nothing (refuse, never delete)
        listed = ()
    return _parents(owned) | {d for d in listed if isinstance(d, str)}


def _bare(folder: Path, unowned: list[str]) -> list[str]:
    """The outermost of the ``unowned`` sub-folders that hold no file at all, as ``"d/"``
    (a folder holding files is named through its files)."""
    out: list[str] = []
    for d in sorted(unowned):
        if any(d.startswith(o + "/") for o in out):
            continue
        if not any(p.is_file() or p.is_symlink() for p in (folder / d).rglob("*")):
            out.append(d)
    return [d + "/" for d in out]


def is_nested(parent: Path, manifest: dict[str, Any], sub: Path) -> bool:
    """``sub`` (a sub-folder of ``parent``) is a nested output the parent wrote."""
    if "nested" in manifest:
        listed = manifest["nested"]
        return isinstance(listed, list) and sub.name in listed
    rule = UNLISTED_NESTED.get(str(manifest.get("kind")))
    return rule is not None and rule(parent, sub)


def enclosing(path: Path) -> tuple[Path, str] | None:
    """``(folder, kind)`` of the output of ours that the (resolved) ``path`` would lie inside,
    or ``None``. Only the nearest ancestor holding our manifest counts, and not when ``path``
    is one of the nested outputs it lists (``nested``; a previous release's sharded store: a
    rank sub-store's name, :data:`UNLISTED_NESTED_NAMES`): those the library writes itself."""
    for anc in path.parents:
        man = read_manifest(anc)
        if man is None:
            continue
        if path.parent == anc:
            if "nested" in man:
                if isinstance(man["nested"], list) and path.name in man["nested"]:
                    return None
            else:
                rule = UNLISTED_NESTED_NAMES.get(str(man.get("kind")))
                if rule is not None and rule(anc, path.name):
                    return None
        return anc, str(man.get("kind"))
    return None


def foreign(folder: Path, legacy: Legacy | None = None) -> tuple[str | None, list[str]]:
    """``(kind, files and folders we did not write)`` of an existing folder (kind ``None``:
    not ours), as sorted relative paths; a folder holding no file is named ``"d/"``.

    ``legacy`` recognises an output written before manifests existed (see :data:`Legacy`);
    kind ``"legacy"`` then. Nested outputs and folders are ours only as the module doc says.
    """
    man = read_manifest(folder)
    if man is not None:
        kind: str | None = str(man.get("kind"))
        owned, patterns = set(man.get("files", [])), list(man.get("patterns", []))
        owned.add(MANIFEST)
    else:
        listed = legacy(folder) if legacy is not None else None
        if listed is None:
            return None, sorted(files(folder) + _bare(folder, folders(folder)))
        kind, owned, patterns, man = "legacy", set(listed), [], {"nested": [], "dirs": []}
        owned.add(MANIFEST)
    dirs, dir_patterns = _own_dirs(man, owned), sorted(_parents(patterns))
    out: list[str] = []
    unowned: list[str] = []
    for entry in sorted(folder.iterdir()):
        rel = entry.name
        if entry.is_dir() and not entry.is_symlink():
            if is_nested(folder, man, entry) and read_manifest(entry) is not None:
                out += [f"{rel}/{f}" for f in foreign(entry)[1]]
                continue
            out += [p for p in (f"{rel}/{f}" for f in files(entry))
                    if p not in owned and not matches(p, patterns)]
            unowned += [d for d in (rel, *(f"{rel}/{d}" for d in folders(entry)))
                        if d not in dirs and not matches(d, dir_patterns)]
        elif rel not in owned and not matches(rel, patterns):
            out.append(rel)
    return kind, sorted(out + _bare(folder, unowned))


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


def _shown(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _noun(items: list[str]) -> str:
    """``files``, ``folders`` or ``files and folders``: what ``items`` (``"d/"``: a folder) are."""
    dirs = sum(i.endswith("/") for i in items)
    return "folders" if dirs == len(items) else "files and folders" if dirs else "files"


def foreign_error(given: Path, a: Path, found: str | None,
                  foreign: list[str]) -> OutputExistsError:
    """The refusal (returned, not raised) of output folder ``a`` (``given``: as the user named
    it), an output of kind ``found`` (``None``: not ours), that holds the ``foreign`` files,
    folders (``"d/"``) or whole outputs. When ``a`` was written by an earlier release, which
    did not record its folders (module doc), the message says a folder may be one it made
    and that deleting it by hand is the way out if it is not the user's."""
    dirs = [f for f in foreign if f.endswith("/")]
    old = ""
    if dirs and found is not None and not lists_dirs(a):
        shown = _shown([str(given / d) + "/" for d in dirs])
        old = (f" ({given} was written by an earlier mechunlearn that did not record the "
               f"folders it made, so it cannot tell whether {shown} is yours: if it is, move "
               "it away; if it is not, delete it by hand)")
    nested = nested_outputs(a, foreign)
    if not nested:
        noun = _noun(foreign)
        return OutputExistsError(
            f"Output folder {given} already holds {noun} mechunlearn did not write "
            f"({_shown(foreign)}){old}. mechunlearn never deletes your files or folders, not "
            f"even with overwrite: pick a new or empty folder, or move those {noun} away.")
    subs = [s for s, _ in nested]
    rest = [f for f in foreign if not any(f.startswith(s + "/") for s in subs)]
    what = "; ".join(f"{given / s} (a separate mechunlearn {k!r} output)" for s, k in nested)
    there = "the earlier mechunlearn" if found == "legacy" else f"the {found!r}"
    owner = f", which {there} output there did not write" if found is not None else ""
    also = (f"; it also holds {_noun(rest)} mechunlearn did not write ({_shown(rest)})"
            if rest else "")
    obj = "it" if len(nested) == 1 and not rest else "them"
    return OutputExistsError(
        f"Output folder {given} holds {what}{owner}{also}{old}. mechunlearn "
        f"never deletes another output, not even with overwrite: move {obj} out of {given}, or "
        "pick a new or empty folder (CLI: another --out).")
