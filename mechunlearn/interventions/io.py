"""Saving and loading interventions: :func:`to_dict` (JSON, tensors inline or by key) and
:func:`save` / :func:`load` (a folder with ``interventions.json`` + ``interventions.safetensors``,
written atomically through :mod:`mechunlearn.outputs`). Importing this module registers
:func:`~mechunlearn.interventions.codec.from_dict` as the decoder ``Compose.from_dict`` uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from mechunlearn.errors import ConfigError, StoreError
from mechunlearn.interventions.base import Compose, Intervention, register_decoder
from mechunlearn.interventions.codec import from_dict
from mechunlearn.interventions.edits import _Serialisable


def to_dict(iv: Intervention, tensors: dict[str, Tensor] | None = None, prefix: str = "0") -> dict[str, Any]:
    """Serialise any registered intervention or ``Compose`` (see :func:`from_dict`)."""
    if isinstance(iv, Compose):
        return {"type": "Compose",
                "parts": [to_dict(p, tensors, f"{prefix}.{i}") for i, p in enumerate(iv.parts)]}
    if not isinstance(iv, _Serialisable):
        raise ConfigError(f"{type(iv).__name__} is not serialisable (not from mechunlearn.interventions).")
    return iv.to_dict(tensors, prefix)


def save(path: str | os.PathLike[str], interventions: list[Intervention],
         overwrite: bool = False) -> Path:
    """Write ``interventions`` to folder ``path`` (JSON + safetensors).

    Written by :func:`mechunlearn.outputs.output_folder` (atomic, package versions in
    ``.mechunlearn.json``; a folder holding other files is refused, see there).
    """
    from safetensors.torch import save_file

    from mechunlearn.outputs import output_folder

    tensors: dict[str, Tensor] = {}
    items = [to_dict(iv, tensors, str(i)) for i, iv in enumerate(interventions)]
    text = json.dumps({"format_version": 1, "interventions": items}, indent=1)
    with output_folder(path, "interventions", overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "interventions.safetensors"))
        (tmp / "interventions.json").write_text(text)
    return Path(path)


def load(path: str | os.PathLike[str]) -> list[Intervention]:
    """Read the list written by :func:`save`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    try:
        meta = json.loads((p / "interventions.json").read_text())
        tensors = load_file(str(p / "interventions.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise StoreError(f"Cannot read interventions from {p}: {e}. The files are missing or "
                         "corrupt: save them again.") from e
    return [from_dict(d, tensors) for d in meta["interventions"]]


register_decoder(from_dict)
