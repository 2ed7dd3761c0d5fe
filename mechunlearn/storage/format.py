"""The on-disk format of a FeatureStore: manifest name and version, dtypes, file patterns.

One reader of manifest files (:func:`read_manifest_file`) serves the plain store
(:mod:`mechunlearn.storage.store`) and the sharded one (:mod:`mechunlearn.storage.sharded`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mechunlearn.errors import DTypeError, StoreError

FORMAT = "mechunlearn-featurestore"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


#: files a store adds after creation (they count as ours when a store folder is replaced),
#: including the temporary files of a write killed midway (``atomic_write``'s names)
STORE_PATTERNS = ("manifest.json", "shard_*.safetensors", ".shard_*.safetensors.*.tmp",
                  ".manifest.json.*.tmp")


def legacy_store_files(folder: Path) -> list[str] | None:
    """Files of a store written before output manifests existed (``None``: not a store)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return None
    return ["manifest.json", *(str(sh.get("file")) for sh in m.get("shards", []))]


def read_manifest_file(mf: Path, fmt: str | None, what: str, hint: str = "") -> dict[str, Any]:
    """The JSON object in the manifest file ``mf`` (one reader for every store format).

    Raises :class:`StoreError` if ``mf`` is not valid JSON (``hint`` is appended: what to do)
    or, when ``fmt`` is given, if it is not an object whose ``"format"`` is ``fmt`` (``what``
    names the expected kind of manifest in the message).
    """
    try:
        m = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"Corrupt manifest {mf}: {e}.{hint}") from e
    got = m.get("format") if isinstance(m, dict) else None
    if not isinstance(m, dict) or (fmt is not None and got != fmt):
        raise StoreError(f"{mf} is not a {what} manifest (format {got!r}).")
    return m


def _dtype_name(dtype: torch.dtype) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise DTypeError(f"Unsupported store dtype {dtype}; use one of {list(_DTYPES)}.")


def _shard_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in ``data``."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})
