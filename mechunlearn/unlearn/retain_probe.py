"""KL to the *original* model on a fixed probe of retain data, the original computed lazily.

:func:`~mechunlearn.unlearn.selective.selective_forget` reports, before each later round, how
far the edits so far moved the model on a probe of retain pairs (``retain_kl_orig``, and its
``kl_budget`` stop). The original model's log-probs on the probe are needed only then: a run
that stops after its first round never needs them. :class:`OriginalKL` computes them at the
first call from the undo snapshot's weights (swapped in for one forward pass, the current
weights copied back bit for bit), so they equal what an eager pass before any edit gives:
the same weights, the same forward (``tests/test_selective_first.py`` checks the two agree).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from mechunlearn.tokens import model_tokenizer
from mechunlearn.unlearn.data import Encode, encode_items, rows
from mechunlearn.unlearn.objectives import token_kl
from mechunlearn.unlearn.reference import forward
from mechunlearn.weights import EditHandle


class OriginalKL:
    """``kl(model) -> float``: mean token KL(original || model) on ``probe``, nats per token.

    Args:
        handle: the undo snapshot taken before any edit (:func:`mechunlearn.weights.snapshot`);
            its saved weights are the original model.
        probe: retain items (:func:`mechunlearn.unlearn.data.as_items` rows).
        encode: as in :func:`mechunlearn.unlearn.unlearn`.

    ``ref`` holds the original's log-probs ``[pos, V]`` float32 per probe row once computed
    (empty before the first call). Memory: during that first call, one more copy of every
    parameter.
    """

    def __init__(self, handle: EditHandle, probe: list[Any], encode: Encode | None) -> None:
        self.handle, self.probe, self.encode = handle, probe, encode
        self.ref: list[Tensor] = []

    def __call__(self, model: Any) -> float:
        if not self.ref:
            with original_weights(self.handle):
                self.ref.extend(logprobs(model, self.probe, self.encode))
        return kl(model, self.probe, self.ref, self.encode)


@contextmanager
def original_weights(handle: EditHandle) -> Iterator[None]:
    """The snapshot's weights in place inside the block; the current ones restored bit for
    bit on exit (also on error)."""
    with torch.no_grad():
        now = [p.detach().clone() for p, _ in handle.saved]
        for p, old in handle.saved:
            p.copy_(old)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), v in zip(handle.saved, now):
                p.copy_(v)


@torch.no_grad()
def logprobs(model: Any, items: list[Any], encode: Encode | None) -> list[Tensor]:
    """Log-softmax of the model's logits per item, ``[pos_i, V]`` float32 (64 rows a pass)."""
    tb = encode_items(model_tokenizer(model), items, encode)
    out: list[Tensor] = []
    for s in range(0, len(items), 64):
        ids, am, _ = rows(tb, torch.arange(s, min(s + 64, len(items))))
        out.extend(torch.log_softmax(forward(model, ids, am)[0].float(), -1).unbind(0))
    return out


@torch.no_grad()
def kl(model: Any, items: list[Any], ref: list[Tensor], encode: Encode | None) -> float:
    """Mean token KL(ref || model) over the real tokens of ``items`` (``ref`` from
    :func:`logprobs`)."""
    tb = encode_items(model_tokenizer(model), items, encode)
    kls = []
    for s in range(0, len(items), 64):
        idx = torch.arange(s, min(s + 64, len(items)))
        ids, am, _ = rows(tb, idx)
        pos = ids.shape[1]
        r = torch.zeros(len(idx), pos, ref[0].shape[-1])
        for j, i in enumerate(idx.tolist()):
            r[j, : min(pos, ref[i].shape[0])] = ref[i][:pos]
        kls.append(token_kl(r, forward(model, ids, am)[0], am.bool()))
    return float(torch.cat(kls).mean())
