"""``tree(root)``: a snapshot of a folder for data-safety tests (what a command left)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree(root: Path) -> dict[str, str]:
    """Every file (sha256), folder (``"dir"``) and link (``"link"``) under ``root``, by path
    relative to it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            out[rel] = ("link" if os.path.islink(p)
                        else hashlib.sha256(Path(p).read_bytes()).hexdigest())
    return out
