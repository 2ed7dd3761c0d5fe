"""Which token positions an edit touches: ``Positions``, :func:`position_mask`, and the
per-forward-pass masks that :func:`mechunlearn.apply` hands to its interventions.

``positions`` is ``"all"``, ``"prompt"`` / ``"response"`` (needs ``response_mask=`` in
``apply``), an int or a list of ints (indices among *real* tokens, negative from the last real
token, so left and right padding agree; needs ``attention_mask=`` in ``apply`` when inputs are
padded), or a boolean ``[batch, pos]`` tensor. The masks live in a ``ContextVar`` set by
:func:`edit_masks` (``apply``) and narrowed per pass by :func:`forward_masks` (decoders) and by
:func:`track_passes` (``apply``), which reads each pass's own ``attention_mask`` and KV-cache
length: a pass that continues a KV cache (``model.generate`` of TransformerLens, or
``model(new_ids, past_key_values=...)``) sees only its new tokens, and int positions still
index the whole sequence (position 0 is the first real token of the prompt, never the new
token). An int position outside every sequence of a pass raises :class:`ConfigError`.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Union

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

    ``p`` is the width of the forward pass the hook sees. When the pass continues a KV cache
    of ``past`` earlier positions (:func:`track_passes`), int positions are counted over the
    whole sequence (``past + p``) and the last ``p`` columns returned; a bool mask or a
    ``response_mask`` must then be ``[b, past + p]``.

    Raises :class:`ConfigError` for an unknown ``positions`` string, ``"prompt"`` /
    ``"response"`` without a response mask, an int position outside every sequence of the
    pass (e.g. 50 on 4 tokens, or -5 on 4 tokens), or a pass continuing a KV cache of unknown
    length; :class:`ShapeError` for a mask of another shape.
    """
    ctx = _CONTEXT.get() or {}
    past = ctx.get("past", 0)
    if isinstance(positions, str) and positions == "all":
        return None
    if past is None:
        raise ConfigError(
            f"positions={positions!r} cannot be placed on this forward pass: it continues a KV "
            "cache of unknown length. Pass attention_mask= covering the whole sequence to the "
            "forward, decode with mechunlearn.lm.greedy / generate, or without a cache "
            "(TransformerLens generate(use_past_kv_cache=False))."
        )
    w = past + p  # the whole sequence's width (the cached positions, then this pass)
    if isinstance(positions, str):
        if positions in ("prompt", "response"):
            resp = _context_mask("response_mask", b, w, device, past)
            if resp is None:
                raise ConfigError(
                    f"positions={positions!r} needs `response_mask=` passed to apply(...)."
                )
            real = _context_mask("attention_mask", b, w, device, past)
            real = torch.ones_like(resp) if real is None else real
            out = resp & real if positions == "response" else (~resp) & real
            return out[:, past:]
        raise ConfigError(
            f"Unknown positions {positions!r}: use 'all', 'prompt', 'response', ints or a mask."
        )
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or tuple(positions.shape) != (b, w):
            extra = f" (this pass continues a KV cache of {past} positions)" if past else ""
            raise ShapeError(
                f"A positions mask must be bool [batch, pos] = {(b, w)}{extra}, got "
                f"{positions.dtype} {tuple(positions.shape)}."
            )
        return positions[:, past:].to(device)
    idx = [positions] if isinstance(positions, int) else list(positions)
    real = _context_mask("attention_mask", b, w, device, past)
    if real is None:
        real = torch.ones(b, w, dtype=torch.bool, device=device)
    n_real = real.sum(1)
    start = first_real_index(real)
    mask = torch.zeros(b, w, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)
    for i in idx:
        rel = torch.full_like(n_real, i) if i >= 0 else n_real + i
        ok = (rel >= 0) & (rel < n_real)
        if b and not bool(ok.any()):
            raise ConfigError(_out_of_range(positions, int(i), n_real))
        mask[rows[ok], (start + rel)[ok]] = True
    return mask[:, past:]


def _out_of_range(positions: Positions, i: int, n_real: Tensor) -> str:
    lo, hi = int(n_real.min()), int(n_real.max())
    lens = f"{hi} real tokens" if lo == hi else f"{lo} to {hi} real tokens per row"
    return (f"positions={positions!r}: position {i} is outside every sequence of this forward "
            f"pass (sequence length {lens}); ints index real tokens from 0 (negative from the "
            f"end), so use -{hi}..{hi - 1}, or positions='all'.")


def _context_mask(name: str, b: int, w: int, device: torch.device, past: int = 0
                  ) -> Tensor | None:
    m = (_CONTEXT.get() or {}).get(name)
    if m is None:
        return None
    if tuple(m.shape) != (b, w):
        extra = (f" (the pass continues a KV cache of {past} positions: the mask must cover "
                 "the whole sequence so far)") if past else ""
        raise ShapeError(
            f"{name} passed to apply() has shape {tuple(m.shape)} but the hook saw "
            f"[batch, pos] = {(b, w)}{extra}; masks must match the forward pass's input."
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


_TRACKED: weakref.WeakSet[Any] = weakref.WeakSet()


@contextmanager
def track_passes(model: Any) -> Iterator[None]:
    """Inside the block, every forward pass through ``model`` (a ``torch.nn.Module``, e.g. a
    ``TransformerBridge``) hands its own ``attention_mask`` and KV-cache length to
    :func:`position_mask` (``apply`` uses this).

    A pass that continues a KV cache (``past_key_values`` / ``cache_position``, as in
    TransformerLens's ``generate`` or a manual incremental decode) shows each hook only its new
    positions; knowing the cache length ``past``, int positions keep indexing the whole
    sequence, so ``Steer(u, positions=[0])`` edits the prompt's first token during
    generation, not every generated token. A cache whose length cannot be read (and no mask
    covering it) makes position-indexed edits raise :class:`ConfigError` instead of guessing.
    The hooks go on ``model`` itself (not on its HookPoints) and are removed at exit; nested
    blocks on one model share the outermost block's hooks.
    """
    if not isinstance(model, torch.nn.Module) or model in _TRACKED:
        yield
        return
    tokens: list[contextvars.Token[Any]] = []

    def pre(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens.append(_CONTEXT.set(_pass_context(args, kwargs)))

    def post(_mod: Any, _args: Any, _kwargs: Any, _out: Any) -> None:
        if tokens:
            _CONTEXT.reset(tokens.pop())

    h_pre = model.register_forward_pre_hook(pre, with_kwargs=True)
    h_post = model.register_forward_hook(post, with_kwargs=True, always_call=True)
    _TRACKED.add(model)
    try:
        yield
    finally:
        h_pre.remove()
        h_post.remove()
        _TRACKED.discard(model)
        while tokens:  # a pass interrupted before its forward hook ran
            _CONTEXT.reset(tokens.pop())


def _cache_length(kwargs: dict[str, Any]) -> int | None:
    """Positions already in the KV cache of a forward call: 0 without a cache, ``None`` when
    there is one whose length cannot be read."""
    past = kwargs.get("past_key_values")
    if past is None:
        past = kwargs.get("cache_params")
    pos = kwargs.get("cache_position")
    if past is None and pos is None:
        return 0
    if past is not None:
        get = getattr(past, "get_seq_length", None)
        try:
            if callable(get):
                return int(get())
            if isinstance(past, (tuple, list)):
                return int(past[0][0].shape[-2]) if len(past) else 0
        except (TypeError, IndexError, AttributeError, ValueError):
            pass
    if isinstance(pos, Tensor) and pos.numel():
        return int(pos.reshape(-1)[0])
    return None


def _pass_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The mask context for one forward call: its own ``attention_mask`` (when it covers the
    whole sequence) and ``past``, the KV-cache length (``None``: unknown)."""
    cur = dict(_CONTEXT.get() or {})
    x = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
    if not isinstance(x, Tensor) or x.ndim < 2:
        cur["past"] = 0 if _cache_length(kwargs) == 0 else None
        return cur
    b, p = int(x.shape[0]), int(x.shape[1])
    am = kwargs.get("attention_mask")
    past = _cache_length(kwargs)
    # The pass's own mask covers the cached positions and this pass (Hugging Face's
    # convention); it wins over a cache's own count (a sliding-window cache may count less).
    if (isinstance(am, Tensor) and am.ndim == 2 and am.shape[0] == b and am.shape[1] >= p
            and (past != 0 or am.shape[1] == p)):
        past = int(am.shape[1]) - p
        cur["attention_mask"] = am
    own = cur.get("attention_mask")
    if past and isinstance(own, Tensor) and tuple(own.shape) == (b, past):  # prompt-only mask
        cur["attention_mask"] = torch.cat([own, own.new_ones(b, p)], 1)
    cur["past"] = past
    return cur
