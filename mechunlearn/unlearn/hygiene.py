"""Forget-set hygiene: keep only the attributed pairs whose unlearning removes the bad
behaviour more than it damages what the user keeps.

Attribution returns an *imprecise* forget set: on a realistic world many selected pairs are
legitimate (a rude answer the user asked for, an ordinary good answer that merely sits close
in feature space). Unlearning them with ``flip`` teaches their rejected response and breaks
ordinary answers (docs/unlearning.md, "guarded unlearning").

**Screening by first-order effects (no ground truth).** For candidate ``i`` with per-sample
unlearning loss ``l_i``, one gradient step ``theta' = theta - eta grad l_i`` changes

* the mean per-token log-probability of the bad responses still found, ``B(theta)``, by
  ``-eta <grad l_i, grad B>``: the *benefit* ``b_i = <grad l_i, grad B>`` (> 0: unlearning ``i``
  lowers the bad responses' likelihood);
* the mean per-token log-probability of the kept responses, ``K(theta)``, by
  ``-eta <grad l_i, grad K>``: the *cost* ``c_i = <grad l_i, grad K>`` (> 0: it lowers them).

Both are changes in nats/token per unit step, so they compare directly. A candidate is kept
when ``b_i > max(0, c_i)``: it moves the bad responses more than the kept ones.

**Which loss.** By default ``l_i`` is the *preference contrast* of the pair: DPO with chosen
and rejected swapped (``Flip(nll=0)``), when every candidate has a good response; NPO
otherwise. Measured on the toy world's ``hard`` world (219 attributed candidates, 39
poisoned, 87 legitimate rude-request pairs): the contrast kept all 39 poisoned pairs and 1 of
the 87 rude requests; NPO's removal-only gradient kept 24 poisoned and 63 rude requests (both
teach "no insult", only the contrast knows the rejected side); full ``flip`` (with its NLL on
the good answer) dropped the exact bad pair on a random model, because at the start its NLL
term dominates.

**It is not reliable yet.** On a second ``hard`` world (seed 1) the same screen inverted:
benefit < 0 for all 41 poisoned candidates and > 0 for 4 clean pairs whose *rejected* answer
is an insult, so unlearning the kept set raised the bad-response rate (0.78 -> 0.96). A
ground-truth-free check is returned with every screen: ``consistency``, the Spearman
correlation between the benefit and the candidates' attribution rank (candidates are
expected best first); attribution and screen are independent signals, and a negative value
means they disagree (seed 0: positive; seed 1: negative), in which case a warning says so.
:func:`~mechunlearn.unlearn.selective_forget` therefore screens only when asked
(``screen=True``). This is the
first-order (one inner step) approximation of the bi-level selection of "Unlearning to
Align" (Feng et al., arXiv:2504.06659), with the outer objective replaced by the bad
responses' likelihood (no good answers needed) and a collateral term on kept data.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.tokens import TokenBatch, model_tokenizer
from mechunlearn.unlearn.data import Encode, as_items, encode_items, rows
from mechunlearn.unlearn.objectives import Flip, Objective, make_objective, response_logprobs
from mechunlearn.unlearn.reference import _Data, forward, snapshot


@dataclass(frozen=True)
class ScreenResult:
    """``benefit``/``cost`` ``[n]`` (nats/token per unit step, see the module docstring),
    ``keep`` ``[n]`` bool, the kept rows and ids (largest margin ``b - c`` first), seconds,
    and ``consistency`` (Spearman correlation of benefit with the candidates' order)."""

    benefit: Tensor
    cost: Tensor
    keep: Tensor
    selected: tuple[int, ...]
    ids: tuple[str, ...]
    seconds: float
    consistency: float = float("nan")

    def summary(self) -> str:
        """One line: how many candidates were kept and why the others were dropped."""
        n, k = len(self.keep), int(self.keep.sum())
        no_gain = int((self.benefit <= 0).sum())
        return (f"kept {k} of {n} forget candidates; dropped {no_gain} whose unlearning does "
                f"not lower the bad responses and {n - k - no_gain} whose unlearning lowers the "
                f"kept responses more than the bad ones; consistency with the attribution order "
                f"{self.consistency:+.2f}")


def mean_logprob(model: Any, tb: Any, chunk: int = 64) -> Tensor:
    """Mean over rows of the per-token response log-prob of token batch ``tb`` (scalar, grad)."""
    n, tot = len(tb), torch.zeros(())
    for s in range(0, n, chunk):
        ids, am, m = rows(tb, torch.arange(s, min(s + chunk, n)))
        lp, nt = response_logprobs(forward(model, ids, am)[0], ids, m)
        tot = tot + (lp / nt.clamp_min(1)).sum()
    return tot / n


def _flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(gs, params)])


def screen_forget(model: Any, candidates: Sequence[Any], bad: Sequence[Any] | TokenBatch,
                  keep: Sequence[Any], objective: str | Objective | None = None, *,
                  encode: Encode | None = None, max_keep: int = 128) -> ScreenResult:
    """Score attributed forget candidates by benefit (bad responses) vs cost (kept data).

    Args:
        candidates: forget candidates, ``n`` preference pairs (chosen = response to unlearn),
            ``(prompt, bad)`` or ``(prompt, bad, good)`` tuples (what :func:`unlearn` takes),
            in attribution order (best first; used only for ``consistency``).
        bad: the bad responses the model still gives, ``(prompt, response)`` pairs (e.g. the
            queries that were attributed; encoded with ``encode``) or a
            :class:`~mechunlearn.tokens.TokenBatch` with a response mask; ``B`` is their mean
            per-token log-prob.
        keep: data whose answers must survive (retain pairs or ``(prompt, response)``); the
            first ``max_keep`` are used for ``K``. Use data *not* in ``candidates``.
        objective: the per-sample loss whose gradient is screened (default: the preference
            contrast ``Flip(nll=0)`` when every candidate has a good response, else ``npo``).

    Returns:
        :class:`ScreenResult` (``n`` entries); the model's weights are unchanged.

    Raises:
        EmptyDataError: empty ``candidates``/``bad``/``keep``.
        ConfigError: ``max_keep < 1``, or an objective without a per-sample loss (RMU).
    """
    if max_keep < 1:
        raise ConfigError(f"max_keep must be >= 1, got {max_keep}.")
    t0 = time.perf_counter()
    if objective is None:
        has_good = all(x.good is not None for x in as_items(candidates, "forget"))
        objective = Flip(nll=0.0) if has_good else "npo"
    obj = make_objective(objective)
    if obj.name == "rmu":
        raise ConfigError("screen_forget scores log-prob objectives; RMU acts on activations. "
                          "Screen with 'flip' or 'npo' and unlearn the kept rows with RMU.")
    data = _Data(model, candidates, None, obj, encode)
    tok = model_tokenizer(model)
    bad_tb = bad if isinstance(bad, TokenBatch) else encode_items(tok, as_items(bad, "bad"), encode)
    keep_items = as_items(keep, "keep")[:max_keep]
    keep_tb = encode_items(tok, keep_items, encode)
    handle = snapshot(model)
    params = [p for p, _ in handle.saved if p.requires_grad]
    n = len(data.forget)
    benefit = torch.empty(n, dtype=torch.float64)
    cost = torch.empty(n, dtype=torch.float64)
    try:
        gb = _flat_grad(mean_logprob(model, bad_tb), params)
        gk = _flat_grad(mean_logprob(model, keep_tb), params)
        for i in range(n):
            gi = _flat_grad(obj.forget(data.quantities(model, torch.tensor([i]))).sum(), params)
            benefit[i] = torch.dot(gi, gb).double()
            cost[i] = torch.dot(gi, gk).double()
    finally:
        handle.undo()
        model.zero_grad(set_to_none=True)
    keep_mask = benefit > cost.clamp_min(0)
    consistency = _spearman(benefit, -torch.arange(n, dtype=torch.float64))
    if consistency < 0:
        warnings.warn(
            f"screen_forget: the benefit scores disagree with the candidates' attribution order "
            f"(Spearman {consistency:+.2f}); the first-order screen is unreliable on this "
            "model: check the kept set or unlearn without screening.", stacklevel=2)
    order = [int(i) for i in torch.argsort(benefit - cost, descending=True) if keep_mask[i]]
    if not order:
        raise EmptyDataError(
            f"None of the {n} forget candidates lowers the bad responses more than the kept "
            "data (screen_forget): the attribution probably missed the cause. Attribute more "
            "bad responses or at another Site.")
    return ScreenResult(benefit.float(), cost.float(), keep_mask, tuple(order),
                        tuple(data.forget[i].id for i in order), time.perf_counter() - t0,
                        consistency)


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two ``[n]`` vectors (nan for n < 3 or constant input)."""
    if len(a) < 3:
        return float("nan")
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")
