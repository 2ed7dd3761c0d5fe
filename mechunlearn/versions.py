"""The package versions that produced an artefact (recorded in every output's manifest).

Read from installed package metadata, so calling :func:`versions` imports nothing heavy.
"""

from __future__ import annotations

import platform
from functools import lru_cache

PACKAGES = ("mechunlearn", "torch", "transformers", "transformer-lens", "safetensors", "numpy")


@lru_cache(maxsize=1)
def _cached() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import PackageNotFoundError, version

    out = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


def versions() -> dict[str, str]:
    """``{"python": ..., "mechunlearn": ..., "torch": ..., "transformers": ...,
    "transformer-lens": ..., "safetensors": ..., "numpy": ...}`` of this process."""
    return dict(_cached())


def versions_line() -> str:
    """One line ``torch 2.13.0, transformers 5.23.0, transformer-lens 4.3.0`` for messages."""
    v = versions()
    return ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "transformer-lens"))
