"""Trained toy worlds shipped inside the package, so the first ``load`` need not train.

``mechunlearn/toyworld/embedded/<config hash>/`` holds what a build trains (``models/{tuned,
sft,gold}/`` safetensors + tokenizer files, ``data.json``, ``timings.json``) and
``embedded.json``: the config, the sha256 and size of every file, and the versions the models
were trained under. The build (:func:`mechunlearn.toyworld.world.build`) copies a verified
embedded world instead of training, then measures its rates (``metrics.json``) under the
installed versions as always: weights may be shipped, measured rates never are. An embedded
copy is used only if every checksum matches and its ``data.json`` equals what the installed
code generates for the config; otherwise the world is trained as before.

Written by ``scripts/embed_world.py`` from a built cache folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mechunlearn.atomic import sha256_file
from mechunlearn.toyworld.config import WorldConfig

ROOT = Path(__file__).resolve().parent / "embedded"
#: files copied from a built world (everything but the measured rates and the manifest)
COPIED = ("data.json", "timings.json", "models")


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in COPIED:
        p = folder / name
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f.relative_to(folder))] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    return out


def find(cfg: WorldConfig, root: Path | None = None) -> tuple[Path | None, str]:
    """The verified embedded copy of ``cfg`` (or ``None``) and why (a short reason).

    Checks: ``embedded.json`` is for this config, every listed file exists with its size and
    sha256, and ``data.json`` equals :func:`mechunlearn.toyworld.data.make_data` of ``cfg``.
    """
    from mechunlearn.toyworld.data import make_data

    folder = (root or ROOT) / cfg.hash()
    try:
        meta = json.loads((folder / "embedded.json").read_text())
    except (OSError, ValueError):
        return None, "no embedded copy"
    if meta.get("config") != cfg.to_dict():
        return None, "embedded copy is for another config"
    for rel, info in meta.get("files", {}).items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
            return None, f"embedded copy: missing or corrupt {rel}"
    if json.loads((folder / "data.json").read_text()) != json.loads(
            json.dumps(make_data(cfg).to_dict())):
        return None, "embedded copy's data differs from what this code generates"
    return folder, f"trained under {meta.get('trained_with')}"


def copy_into(src: Path, dest: Path) -> None:
    """Copy an embedded world's files (``COPIED``) into a build folder ``dest``."""
    for name in COPIED:
        s = src / name
        if s.is_dir():
            shutil.copytree(s, dest / name)
        else:
            shutil.copyfile(s, dest / name)


def _legacy(folder: Path) -> list[str] | None:
    """Files of an embedded copy written before output manifests (``None``: not one)."""
    try:
        meta = json.loads((folder / "embedded.json").read_text())
    except (OSError, ValueError):
        return None
    return ["embedded.json", *meta.get("files", {})] if isinstance(meta, dict) else None


def embed(built: Path, cfg: WorldConfig, trained_with: dict[str, str],
          root: Path | None = None) -> Path:
    """Write ``built`` (a verified cache folder of ``cfg``) as an embedded copy; returns it.

    Written through :func:`mechunlearn.outputs.output_folder` (temporary sibling, rename;
    only a previous embedded copy is replaced, never a folder holding other files).
    """
    from mechunlearn.outputs import output_folder

    dest = (root or ROOT) / cfg.hash()
    with output_folder(dest, "toyworld-embedded", legacy=_legacy) as tmp:
        copy_into(built, tmp)
        meta = {"config": cfg.to_dict(), "hash": cfg.hash(), "trained_with": trained_with,
                "files": _files(tmp)}
        (tmp / "embedded.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return dest
