"""Linear datamodeling score (LDS): do attribution scores predict what retraining does?

Source: Park et al., "TRAK: Attributing Model Behavior at Scale" (arXiv:2303.14186), the
metric kronfluence and Bergson report. Draw ``M`` random subsets of the training set (each
pair kept with probability ``frac``), retrain on each, and measure a query's behaviour
``f_q(S_m)`` (here: the log-prob margin of the bad response over a good one). An attribution
``tau_q [N]`` predicts the additive effect ``g_q(S_m) = sum_{i in S_m} tau_q[i]``. The LDS of
a query is the Spearman rank correlation of ``g_q(S_m)`` and ``f_q(S_m)`` over the ``M``
subsets; the method's LDS is the mean over queries. 1: the scores order the subsets exactly as
retraining does; 0: no better than random scores. Training noise (one retrain per subset)
caps what any method can reach.

The generic part (:func:`random_subsets`, :func:`predicted_effects`, :func:`lds`) works on any
scores; :func:`retrain_effects` retrains a toy world's DPO stage (the toy world is fed here,
in ``studies/``, never below).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, ShapeError, check_finite
from mechunlearn.ranking import avg_ranks


def random_subsets(n: int, m: int, frac: float = 0.5, seed: int = 0) -> Tensor:
    """``[m, n]`` bool masks, each keeping exactly ``round(frac * n)`` of ``n`` samples.

    Raises ConfigError for ``n < 2``, ``m < 3`` or ``frac`` outside ``(0, 1)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"n (training samples) must be an int >= 2, got {n!r}.")
    if isinstance(m, bool) or not isinstance(m, int) or m < 3:
        raise ConfigError(f"m (subsets) must be an int >= 3 for a rank correlation, got {m!r}.")
    if not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
        raise ConfigError(f"frac must be in (0, 1), got {frac!r}.")
    keep = max(1, min(n - 1, round(frac * n)))
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(m, n, dtype=torch.bool)
    for j in range(m):
        masks[j, torch.randperm(n, generator=g)[:keep]] = True
    return masks


def predicted_effects(scores: Tensor, masks: Tensor) -> Tensor:
    """Additive prediction ``[M, Q]``: ``sum_{i in subset m} scores[q, i]``.

    Args:
        scores: ``[Q, N]`` (or ``[N]`` for one query) attribution scores, float.
        masks: ``[M, N]`` bool subset masks (:func:`random_subsets`).
    """
    s = scores[None] if scores.ndim == 1 else scores
    if s.ndim != 2 or masks.ndim != 2 or s.shape[1] != masks.shape[1]:
        raise ShapeError(f"scores {tuple(scores.shape)} and masks {tuple(masks.shape)} must be "
                         "[Q, N] and [M, N] with the same N.")
    check_finite("attribution scores", s)
    return masks.double() @ s.double().T


def _spearman(a: Tensor, b: Tensor) -> float:
    ra, rb = avg_ranks(a.double()), avg_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float(ra @ rb) / den if den > 0 else 0.0


@dataclass(frozen=True)
class LDSResult:
    """``per_query [Q]`` Spearman correlations (float64) and their ``mean`` / ``sd``."""

    per_query: Tensor
    mean: float
    sd: float


def lds(predicted: Tensor, actual: Tensor) -> LDSResult:
    """Per-query Spearman correlation over subsets of predicted and actual effects.

    Args:
        predicted: ``[M, Q]`` (:func:`predicted_effects`).
        actual: ``[M, Q]`` measured behaviour of the model retrained on each subset.

    Raises ShapeError if the shapes differ or ``M < 3``; NonFiniteError on NaN/inf. A query
    whose predictions (or outcomes) are all equal gets 0.
    """
    if predicted.shape != actual.shape or predicted.ndim != 2 or predicted.shape[0] < 3:
        raise ShapeError(f"predicted {tuple(predicted.shape)} and actual "
                         f"{tuple(actual.shape)} must both be [M >= 3, Q].")
    check_finite("predicted effects", predicted)
    check_finite("actual effects", actual)
    per = torch.tensor([_spearman(predicted[:, q], actual[:, q])
                        for q in range(predicted.shape[1])], dtype=torch.float64)
    sd = float(per.std()) if len(per) > 1 else 0.0
    return LDSResult(per, float(per.mean()), sd)


def lds_table(scores: Mapping[str, Tensor], masks: Tensor, actual: Tensor) -> list[dict[str, Any]]:
    """One row per method: ``method, lds, lds_sd, n_queries, n_subsets``."""
    rows = []
    for name, s in scores.items():
        r = lds(predicted_effects(s, masks), actual)
        rows.append({"method": name, "lds": r.mean, "lds_sd": r.sd,
                     "n_queries": int(actual.shape[1]), "n_subsets": int(actual.shape[0])})
    return rows


def retrain_effects(world: Any, masks: Tensor, prompts: Sequence[str], bad: Sequence[str],
                    good: Sequence[str], progress: Callable[[str], None] | None = None) -> Tensor:
    """Retrain the world's DPO stage on each subset; bad-over-good log-prob margins ``[M, Q]``.

    Each row ``m`` reruns :func:`mechunlearn.toyworld.train.dpo` (same config, seed and SFT
    start as the world's tuned model) on the training pairs where ``masks[m]`` is True and
    measures ``log p(bad_q | q) - log p(good_q | q)`` (nats, summed over response tokens incl.
    ``<eos>``) for every query. Cost: one DPO stage per subset (the ``tiny`` world: ~10-30 s).
    """
    from mechunlearn.studies.counterfactual import retrain_without
    from mechunlearn.toyworld import response_logprob

    ids = [p.id for p in world.train]
    if masks.ndim != 2 or masks.shape[1] != len(ids):
        raise ShapeError(f"masks must be [M, {len(ids)}] (one column per training pair), got "
                         f"{tuple(masks.shape)}.")
    if not (len(prompts) == len(bad) == len(good)) or not prompts:
        raise ShapeError(f"need one bad and one good response per prompt; got {len(prompts)} "
                         f"prompts, {len(bad)} bad, {len(good)} good.")
    rows = []
    for m in range(masks.shape[0]):
        t0 = time.perf_counter()
        drop = [i for i, keep in zip(ids, masks[m].tolist()) if not keep]
        model = retrain_without(world, drop)
        lb = response_logprob(model, list(prompts), list(bad), tokenizer=world.tokenizer)
        lg = response_logprob(model, list(prompts), list(good), tokenizer=world.tokenizer)
        rows.append((lb - lg).double())
        if progress:
            progress(f"[lds] subset {m + 1}/{masks.shape[0]}: mean margin "
                     f"{float(rows[-1].mean()):.2f} ({time.perf_counter() - t0:.0f}s)")
    return torch.stack(rows)
