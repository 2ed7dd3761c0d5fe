"""JSON encoding of interventions: the type registry, tensors inline or by reference, and
:func:`from_dict` (any registered type, including ``Compose``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, StoreError
from mechunlearn.interventions.base import Compose, Intervention
from mechunlearn.sites import Site

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Register an Intervention class for :func:`from_dict` under its class name."""
    REGISTRY[cls.__name__] = cls
    return cls


def _encode(v: Any, tensors: dict[str, Tensor] | None, key: str) -> Any:
    if isinstance(v, Site):
        return {"__site__": v.to_dict()}
    if isinstance(v, Tensor):
        if tensors is None:
            return {"__tensor__": v.tolist(), "dtype": str(v.dtype).replace("torch.", "")}
        tensors[key] = v.detach().cpu().clone().contiguous()
        return {"__ref__": key}
    if isinstance(v, (list, tuple)):
        return [_encode(x, tensors, f"{key}.{i}") for i, x in enumerate(v)]
    return v


def _decode(v: Any, tensors: dict[str, Tensor] | None) -> Any:
    if isinstance(v, dict):
        if "__site__" in v:
            return Site.from_dict(v["__site__"])
        if "__tensor__" in v:
            return torch.tensor(v["__tensor__"], dtype=getattr(torch, v.get("dtype", "float32")))
        if "__ref__" in v:
            if tensors is None or v["__ref__"] not in tensors:
                raise StoreError(f"Tensor {v['__ref__']!r} missing from the saved tensors.")
            return tensors[v["__ref__"]]
        return {k: _decode(x, tensors) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x, tensors) for x in v]
    return v


def from_dict(d: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> Intervention:
    """Rebuild an intervention (or ``Compose``) written by :func:`to_dict`."""
    if not isinstance(d, dict) or "type" not in d:
        raise ConfigError(f"Not an intervention dict: {str(d)[:80]!r}.")
    if d["type"] == "Compose":
        return Compose(*[from_dict(p, tensors) for p in d["parts"]])
    cls = REGISTRY.get(d["type"])
    if cls is None:
        raise ConfigError(f"Unknown intervention type {d['type']!r}; known: {sorted(REGISTRY)}.")
    kwargs = {k: _decode(v, tensors) for k, v in d.items() if k != "type"}
    if isinstance(kwargs.get("positions"), list):
        kwargs["positions"] = tuple(kwargs["positions"])
    return cls(**kwargs)
