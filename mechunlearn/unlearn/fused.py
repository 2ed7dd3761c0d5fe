"""A self-checked fast path for the unlearning loop: fused tanh-GELU while the loop runs.

GPT-2-style Hugging Face models compute their MLP activation with transformers'
``NewGELUActivation``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` written as about
eight separate tensor operations, each stored for the backward pass. ``torch.nn.functional.gelu(
x, approximate="tanh")`` is the same formula as one fused kernel. On the toy world's GPT-2
(4 layers, d=128) a forward+backward of 64 sequences took 0.155 s with the former and
0.122 s with the latter (the activation was ~20 % of a training step).

:func:`fused_gelu` swaps every ``NewGELUActivation`` submodule of the model for the fused one
inside a ``with`` block and puts the originals back on exit (also on error). The swap holds
no parameters, so weights, fingerprints and undo handles are untouched. The first use per
model class is checked against the unswapped forward on a real batch
(:func:`mechunlearn.fastpath.self_check`); on mismatch it warns once and the loop runs the
model as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechunlearn import fastpath
from mechunlearn.fastpath import close


class FusedTanhGELU(nn.Module):
    """``gelu(x, approximate="tanh")``: elementwise, any shape, same dtype as ``x``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


def _slow_gelus(model: Any) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, module) of every transformers ``NewGELUActivation``."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    if not isinstance(model, nn.Module):
        return []
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children() if isinstance(child, NewGELUActivation)]


@contextmanager
def fused_gelu(model: Any, ids: Tensor, am: Tensor, forward: Any) -> Iterator[bool]:
    """Run ``model`` with fused tanh-GELU activations inside the block; yields whether it does.

    Args:
        model: a TransformerBridge or Hugging Face model (anything else: unchanged, yields
            False).
        ids, am: a real batch ``[b, pos]`` (int64 token ids, attention mask) for the
            first-use check (its first two rows are used).
        forward: ``forward(model, ids, am) -> (logits [b, pos, V], ...)``, the caller's
            forward pass (compared with and without the swap).

    The swap is undone on exit. A mismatch (max |logit difference| above
    :func:`mechunlearn.fastpath.close`'s tolerance) warns once per process with
    :class:`~mechunlearn.errors.FastPathMismatchWarning` and the model runs unchanged.
    """
    found = _slow_gelus(model)
    if not found:
        yield False
        return

    def swap(on: bool) -> None:
        for parent, name, child in found:
            setattr(parent, name, FusedTanhGELU() if on else child)

    def compare() -> tuple[bool, float]:
        with torch.no_grad():
            ref = forward(model, ids[:2], am[:2])[0]
            swap(True)
            try:
                fast = forward(model, ids[:2], am[:2])[0]
            finally:
                swap(False)
        return close(fast, ref)

    key = f"unlearn.fused_gelu:{type(getattr(model, 'original_model', model)).__name__}"
    ok = fastpath.self_check(key, compare, "The unlearning loop's fused tanh-GELU")
    if ok:
        swap(True)
    try:
        yield ok
    finally:
        if ok:
            swap(False)
