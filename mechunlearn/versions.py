"""Versions of the packages whose behaviour mechunlearn's results depend on.

Recorded in every artefact the library writes (report folders, stores, saved directions,
exported models) and named in fast-path mismatch warnings, so a result can always be traced
to the software that produced it.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

PACKAGES = ("mechunlearn", "torch", "transformers", "transformer-lens", "tokenizers", "numpy")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """``{package: version}`` for :data:`PACKAGES` plus ``python``; ``"absent"`` if not installed.

    Cached for the process (versions do not change while it runs).
    """
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def versions_line() -> str:
    """One line ``torch 2.13.0, transformers 5.23.0, ...`` for messages."""
    v = versions()
    return ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "transformer-lens"))
