"""Which token positions an edit touches: ``Positions``, :func:`position_mask`, and the
per-forward-pass masks that :func:`mechunlearn.apply` hands to its interventions.

``positions`` is ``"all"``, ``"prompt"`` / ``"response"`` (needs ``response_mask=`` in
``apply``), an int or a list of ints (indices among *real* tokens, negative from the last real
token, so left and right padding agree; needs ``attention_mask=`` in ``apply`` when inputs are
padded), or a boolean ``[batch, pos]`` tensor. The masks live in a ``ContextVar`` set by
:func:`edit_masks` (``apply``) and narrowed per pass by :func:`forward_masks` (decoders).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Union

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.layouts import first_real_index

Positions = Union[str, int, Sequence[int], Tensor]  # noqa: UP007 (runtime alias)

_CONTEXT: contextvars.ContextVar[dict[str, Tensor | None] | None] = contextvars.ContextVar(
    "mechunlearn_hook_context", default=None
)


@contextmanager
def edit_masks(attention_mask: Tensor | None, response_mask: Tensor | None) -> Iterator[None]:
    """Make ``attention_mask`` / ``response_mask`` (``[batch, pos]``, bool or 0/1) the masks
    that :func:`position_mask` reads inside the block (``apply`` uses this).

    Nested blocks inherit: a mask given as ``None`` inside an enclosing block keeps the
    enclosing block's mask (a nested ``apply`` without masks runs on the same forward pass,
    so blanking the outer masks would move the outer edits onto padding)."""
    outer = _CONTEXT.get() or {}
    token = _CONTEXT.set({
        "attention_mask": attention_mask if attention_mask is not None
        else outer.get("attention_mask"),
        "response_mask": response_mask if response_mask is not None
        else outer.get("response_mask"),
    })
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def position_mask(positions: Positions, b: int, p: int, device: torch.device) -> Tensor | None:
    """Boolean ``[b, p]`` mask of the positions to edit (``None`` means every position).

    Raises :class:`ConfigError` for an unknown ``positions`` string or ``"prompt"`` /
    ``"response"`` without a response mask, :class:`ShapeError` for a mask of another shape.
    """
    if isinstance(positions, str):
        if positions == "all":
            return None
        if positions in ("prompt", "response"):
            resp = _context_mask("response_mask", b, p, device)
            if resp is None:
                raise ConfigError(
                    f"positions={positions!r} needs `response_mask=` passed to apply(...)."
                )
            real = _context_mask("attention_mask", b, p, device)
            real = torch.ones_like(resp) if real is None else real
            return resp & real if positions == "response" else (~resp) & real
        raise ConfigError(
            f"Unknown positions {positions!r}: use 'all', 'prompt', 'response', ints or a mask."
        )
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or tuple(positions.shape) != (b, p):
            raise ShapeError(
                f"A positions mask must be bool [batch, pos] = {(b, p)}, got "
                f"{positions.dtype} {tuple(positions.shape)}."
            )
        return positions.to(device)
    idx = [positions] if isinstance(positions, int) else list(positions)
    real = _context_mask("attention_mask", b, p, device)
    if real is None:
        real = torch.ones(b, p, dtype=torch.bool, device=device)
    n_real = real.sum(1)
    start = first_real_index(real)
    mask = torch.zeros(b, p, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)
    for i in idx:
        rel = torch.full_like(n_real, i) if i >= 0 else n_real + i
        ok = (rel >= 0) & (rel < n_real)
        mask[rows[ok], (start + rel)[ok]] = True
    return mask


def _context_mask(name: str, b: int, p: int, device: torch.device) -> Tensor | None:
    m = (_CONTEXT.get() or {}).get(name)
    if m is None:
        return None
    if tuple(m.shape) != (b, p):
        raise ShapeError(
            f"{name} passed to apply() has shape {tuple(m.shape)} but the hook saw "
            f"[batch, pos] = {(b, p)}; masks must match the forward pass's input."
        )
    return m.to(device).bool()


@contextmanager
def forward_masks(attention_mask: Tensor | None) -> Iterator[None]:
    """Hand one forward pass's padding mask ``[batch, pos]`` to the interventions of the
    enclosing :func:`apply` block (for int ``positions``: indices among real tokens).

    Decoders call this around each forward pass, whose width grows step by step, so that a
    position-indexed edit lands on each row's real tokens, not on padding. Outside an
    ``apply`` block it does nothing. A ``response_mask`` given to ``apply`` is dropped for the
    pass when its shape no longer matches.
    """
    cur = _CONTEXT.get()
    if cur is None or attention_mask is None:
        yield
        return
    resp = cur.get("response_mask")
    if resp is not None and tuple(resp.shape) != tuple(attention_mask.shape):
        resp = None
    token = _CONTEXT.set({**cur, "attention_mask": attention_mask, "response_mask": resp})
    try:
        yield
    finally:
        _CONTEXT.reset(token)
