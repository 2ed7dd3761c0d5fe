"""U2A (seed 002, "Unlearning to Align"): choose and weight negatives by what unlearning them
does to a preference metric on held-out data.

**Bi-level problem.** Inner: ``theta'(w) = argmin_theta sum_i w_i l_i(theta)`` (the
unlearning objective on weighted forget candidates). Outer: maximise a preference-alignment
metric ``J(theta'(w))`` on a held-out set, here the mean length-normalised log-probability
margin of good over bad responses (DPO's implicit reward margin against the current model).

**First-order approximation (what this module computes).** Replace the inner argmin by one
gradient step from the current weights, ``theta' = theta - eta sum_i w_i grad l_i``. Then
``dJ/dw_i = -eta <grad l_i, grad J>``, so the *alignment score* of candidate ``i`` is
``s_i = -<grad l_i(theta), grad J(theta)>``: positive when unlearning ``i`` moves the
held-out margin the right way. Weights are ``w_i = max(0, s_i) / sum_j max(0, s_j)``
(optionally only the ``top_k`` largest), and the selected set is ``{i : w_i > 0}``. With
``rounds > 1`` the procedure alternates: take ``inner_steps`` weighted unlearning steps,
recompute ``grad J`` and the scores at the new weights, and average the weights over rounds
(the model is restored afterwards). This is a one-step (greedy) hypergradient, not the
paper's full implicit-function solution; it ignores curvature of the inner problem.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.tokens import model_tokenizer
from mechunlearn.unlearn.data import Encode, as_items, encode_items, rows
from mechunlearn.unlearn.fused import fused_gelu
from mechunlearn.unlearn.loop import _Data, forward, snapshot
from mechunlearn.unlearn.objectives import Objective, make_objective, response_logprobs


@dataclass(frozen=True)
class U2AResult:
    """Per-candidate ``scores`` and ``weights`` (``[n]``, weights sum to 1), the selected
    rows (best first) and their ids, the held-out margin before, and seconds taken."""

    scores: Tensor
    weights: Tensor
    selected: tuple[int, ...]
    ids: tuple[str, ...]
    margin: float
    seconds: float


def preference_margin(model: Any, heldout: Any, chunk: int = 64) -> Tensor:
    """Mean over held-out pairs of ``avg logp(good) - avg logp(bad)`` (scalar, with grad).

    ``heldout``: a :class:`_Held` (from :func:`_held`)."""
    tot = torch.zeros(())
    n = len(heldout.items)
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(s + chunk, n))
        vals = []
        for tb in (heldout.good, heldout.bad):
            ids, am, m = rows(tb, idx)
            lp, nt = response_logprobs(forward(model, ids, am)[0], ids, m)
            vals.append(lp / nt.clamp_min(1))
        tot = tot + (vals[0] - vals[1]).sum()
    return tot / n


@dataclass
class _Held:
    items: list[Any]
    good: Any
    bad: Any


def _held(model: Any, heldout: Sequence[Any], encode: Encode | None) -> _Held:
    items = as_items(heldout, "forget")  # (prompt, bad, good) or pairs (chosen = bad side)
    if any(x.good is None for x in items):
        raise ConfigError("U2A held-out items need a good and a bad response: "
                          "(prompt, bad, good) tuples or pairs with chosen=bad.")
    tok = model_tokenizer(model)
    return _Held(items, encode_items(tok, items, encode, "good"),
                 encode_items(tok, items, encode, "response"))


def _flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(gs, params)])


def u2a_weights(model: Any, candidates: Sequence[Any], heldout: Sequence[Any],
                objective: str | Objective = "npo", *, top_k: int | None = None,
                rounds: int = 1, inner_steps: int = 5, lr: float = 3e-4,
                encode: Encode | None = None) -> U2AResult:
    """Score, weight and select forget candidates by first-order bi-level optimisation.

    Args:
        candidates: forget candidates (preference pairs with chosen = the bad response,
            ``(prompt, bad)`` or ``(prompt, bad, good)``), e.g. attribution's top samples.
        heldout: held-out ``(prompt, bad, good)`` items (or pairs with chosen = bad) on which
            the preference margin is measured (not the candidates themselves).
        objective: the unlearning objective whose per-sample gradient is scored.
        top_k: keep only the ``top_k`` best-scoring candidates with positive score.
        rounds, inner_steps, lr: alternate scoring with ``inner_steps`` weighted Adam steps.

    Returns:
        :class:`U2AResult`; the model's weights are unchanged on return.
    """
    if rounds < 1 or inner_steps < 0:
        raise ConfigError(f"rounds must be >= 1 and inner_steps >= 0, got {rounds}, {inner_steps}.")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}.")
    t0 = time.perf_counter()
    obj = make_objective(objective)
    data = _Data(model, candidates, None, obj, encode)
    held = _held(model, heldout, encode)
    n = len(data.forget)
    handle = snapshot(model)
    params = [p for p, _ in handle.saved if p.requires_grad]
    acc = torch.zeros(n, dtype=torch.float64)
    margin0 = float("nan")
    fast = ExitStack()
    try:  # fused tanh-GELU while scoring (self-checked; undone below)
        fast.enter_context(fused_gelu(model, *rows(data.fb, torch.arange(min(2, n)))[:2],
                                      forward))
        for r in range(rounds):
            margin = preference_margin(model, held)
            if r == 0:
                margin0 = float(margin.detach())
            gj = _flat_grad(margin, params)
            scores = torch.empty(n, dtype=torch.float64)
            for i in range(n):
                li = obj.forget(data.quantities(model, torch.tensor([i]))).sum()
                scores[i] = -torch.dot(_flat_grad(li, params), gj).double()
            w = _normalise(scores, top_k)
            acc += w
            if r + 1 < rounds and inner_steps > 0:
                _inner(model, data, obj, w, params, inner_steps, lr)
    finally:
        fast.close()
        handle.undo()
        model.zero_grad(set_to_none=True)
    weights = acc / acc.sum() if float(acc.sum()) > 0 else acc
    order = [int(i) for i in torch.argsort(weights, descending=True) if weights[i] > 0]
    return U2AResult(scores.float(), weights.float(), tuple(order),
                     tuple(data.forget[i].id for i in order), margin0,
                     time.perf_counter() - t0)


def _normalise(scores: Tensor, top_k: int | None) -> Tensor:
    w = scores.clamp_min(0)
    if top_k is not None and int((w > 0).sum()) > top_k:
        keep = torch.argsort(w, descending=True)[:top_k]
        mask = torch.zeros_like(w, dtype=torch.bool)
        mask[keep] = True
        w = torch.where(mask, w, torch.zeros_like(w))
    if float(w.sum()) <= 0:
        raise EmptyDataError("No forget candidate improves the held-out preference margin "
                             "(all alignment scores <= 0); nothing to select.")
    return w / w.sum()


def _inner(model: Any, data: _Data, obj: Objective, w: Tensor, params: list[Tensor],
           steps: int, lr: float) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    idx = torch.nonzero(w > 0).flatten()
    wb = w[idx].float()
    for _ in range(steps):
        loss = (obj.forget(data.quantities(model, idx)) * wb).sum() / wb.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
