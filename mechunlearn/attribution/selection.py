"""Choosing a Site (or a setting) for attribution without ground truth: split-half stability.

A user attributing a set of bad responses does not know which training samples are truly
responsible, so a Site, pooling or normalisation cannot be chosen by AUC. What can be measured
is whether the answer is *reproducible*: split the bad responses at random into two halves,
attribute each half as a set (mean of per-query scores), and count how many of the top ``m``
training samples the two halves share. A Site at which independent bad responses point to the
same training samples is one where the attribution reflects something they have in common
(their cause) rather than each response's surface; a Site where the halves disagree is
ranking noise. This is split-half reliability (classical test theory: Spearman 1910, Brown
1910, "British Journal of Psychology" 3) applied to the top of a ranking; there is no arXiv
source, the criterion is this library's.

Stability is necessary, not sufficient: a score that ignores the query (e.g. a norm) is
perfectly stable. Use it to choose among query-dependent methods' Sites and settings, and
read it beside the methods' own diagnostics. docs/attribution.md reports how often it picked
the best Site on the toy worlds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, ShapeError, check_finite


def split_half_stability(scores: Tensor, m: int = 32, n_splits: int = 20, seed: int = 0) -> float:
    """Mean top-``m`` overlap between the set rankings of two random halves of the queries.

    Args:
        scores: ``[Q, N]`` per-query scores of every training sample (``Q >= 4`` queries;
            e.g. ``torch.stack([a.scores for a in attributor.attribute_many(queries)])``).
        m: size of the top of the ranking that is compared (``1 <= m < N``).
        n_splits: random half-splits averaged over.
        seed: seed of the splits.

    Returns:
        A float in ``[0, 1]``: 1 = both halves select the same ``m`` samples every time;
        about ``m / N`` for unrelated rankings.

    Raises:
        ShapeError: ``scores`` not ``[Q, N]`` or fewer than 4 queries.
        ConfigError: ``m`` or ``n_splits`` out of range.
    """
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise ShapeError(f"scores must be a [Q, N] tensor, got "
                         f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)}.")
    q, n = scores.shape
    if q < 4:
        raise ShapeError(f"split_half_stability needs at least 4 queries (two halves of >= 2), "
                         f"got {q}.")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < n:
        raise ConfigError(f"m must be an int in [1, {n - 1}], got {m!r}.")
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise ConfigError(f"n_splits must be an int >= 1, got {n_splits!r}.")
    check_finite("scores", scores)
    s = scores.double()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_splits):
        perm = torch.randperm(q, generator=g)
        a, b = perm[: q // 2], perm[q // 2:]
        ta = set(torch.topk(s[a].mean(0), m).indices.tolist())
        tb = set(torch.topk(s[b].mean(0), m).indices.tolist())
        total += len(ta & tb) / m
    return total / n_splits


def choose_by_stability(candidates: Mapping[Any, Tensor], m: int = 32, n_splits: int = 20,
                        seed: int = 0) -> tuple[Any, dict[Any, float]]:
    """The candidate (e.g. a Site key) whose per-query scores are the most split-half stable.

    Args:
        candidates: ``{key: scores [Q, N]}`` for the same queries and training set.
        m, n_splits, seed: as in :func:`split_half_stability`.

    Returns ``(best key, {key: stability})``; ties go to the first key in iteration order.
    """
    if not candidates:
        raise ConfigError("choose_by_stability() got no candidates.")
    table = {key: split_half_stability(s, m=m, n_splits=n_splits, seed=seed)
             for key, s in candidates.items()}
    best = max(table, key=lambda key: table[key])
    return best, table
