"""Which model a result was fitted on: weight fingerprints and the same-model check.

Features, :class:`~mechunlearn.directions.Directions` and the interventions built from them
carry the fingerprint of the model they came from. Applying them to a model with other
weights (same ``d``, so nothing else would notice) warns with
:class:`~mechunlearn.errors.ModelMismatchWarning`; in strict mode it raises
:class:`~mechunlearn.errors.ModelMismatchError` instead. Strict mode is on inside
``with strict():`` or when the environment variable ``MECHUNLEARN_STRICT=1``.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ModelMismatchError, ModelMismatchWarning

_STRICT: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "mechunlearn_strict", default=None
)
_CACHE_ATTR = "_mechunlearn_fingerprint_cache"


def model_fingerprint(model: torch.nn.Module, sample: int = 4096) -> str:
    """Short sha256 of parameter names, shapes, dtypes, sums and a strided sample of values.

    Changes whenever any weight tensor changes in practice; costs one pass over the weights.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, Tensor):
            continue
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        if flat.is_floating_point():
            h.update(repr(float(flat.sum(dtype=torch.float64))).encode())
        step = max(1, flat.numel() // sample)
        h.update(flat[::step].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def current_fingerprint(model: torch.nn.Module) -> str:
    """:func:`model_fingerprint`, cached on the model until any tensor is modified.

    The cache key is every state tensor's identity, storage pointer and in-place version
    counter (optimiser steps, ``copy_`` and ``orthogonalize_`` all bump it), so checking the
    same model in a loop costs one walk over its tensors, not one pass over the weights.
    """
    key = tuple((id(t), t.data_ptr(), t._version) for t in model.state_dict().values()
                if isinstance(t, Tensor))
    cached = getattr(model, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    fp = model_fingerprint(model)
    try:
        object.__setattr__(model, _CACHE_ATTR, (key, fp))
    except (AttributeError, TypeError):  # pragma: no cover - exotic model classes
        pass
    return fp


def strict_enabled() -> bool:
    """Whether model mismatches raise (``with strict():`` or ``MECHUNLEARN_STRICT=1``)."""
    v = _STRICT.get()
    if v is not None:
        return v
    return os.environ.get("MECHUNLEARN_STRICT", "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Inside this block a model mismatch raises :class:`ModelMismatchError` (or, with
    ``enabled=False``, only warns, whatever ``MECHUNLEARN_STRICT`` says)."""
    token = _STRICT.set(bool(enabled))
    try:
        yield
    finally:
        _STRICT.reset(token)


def check_same_model(fitted: str | None, model: Any, what: str) -> None:
    """Warn (strict: raise) if ``model``'s fingerprint is not ``fitted``.

    Args:
        fitted: fingerprint recorded when ``what`` was fitted (``None``: unknown, no check).
        model: the model it is about to be applied to.
        what: a short description for the message, e.g. ``"Project at blocks.1...@last"``.
    """
    if fitted is None or not isinstance(model, torch.nn.Module):
        return
    now = current_fingerprint(model)
    if now == fitted:
        return
    msg = (f"{what} was fitted on a model with fingerprint {fitted}, but is applied to a "
           f"model with fingerprint {now} (other weights, same width). Refit it on this model, "
           "or drop the check by building it from a plain tensor.")
    if strict_enabled():
        raise ModelMismatchError(msg)
    warnings.warn(msg, ModelMismatchWarning, stacklevel=3)
