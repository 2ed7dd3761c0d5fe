"""Shared support across queries: pool each bad answer's attribution with its neighbours'.

One bad answer's ranking is noisy: a rude request that taught the same insult matches it as
well as a poisoned pair does. Bad answers with the same cause agree on the pairs behind them,
while the distractors each one matches differ. So the attribution of query ``q`` is the mean
of the z-scored per-query scores of ``q`` and its ``k`` nearest other bad answers (a soft set:
``k = 0`` is the plain per-query attribution, ``k = Q - 1`` the attribution of the whole set).

**Choosing k without ground truth: leave-one-out prediction.** For every query, let its ``k``
neighbours *without itself* pick their top ``m`` training samples, and read the query's own
score on them (neighbours are found by the correlation of the rows on a random half of the
training samples, the top ``m`` and the query's score are read on the other half). If the
per-query noise is independent across queries, the query's own score on that set estimates its
true (noise-free) score there, so the best ``k`` is the best bias/variance trade-off at the
top of the ranking: large ``k`` when the bad answers share a cause, small ``k`` when they do
not (a mixed set). A squared-error version of the same check preferred pooling everything even
on a planted three-cause set (the error is dominated by the bulk of unrelated samples), so the
criterion looks at the top. This is leave-one-out cross-validation of a
nearest-neighbour smoother (Stone, "Cross-validatory choice and assessment of statistical
predictions", J. R. Stat. Soc. B 36, 1974; no arXiv id); the "shared support" idea is issue
19's "attributing a set of bad responses as one problem".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, ShapeError, check_finite


def zscore_rows(scores: Tensor) -> Tensor:
    """Each row of ``[Q, N]`` scores centred and scaled to unit sd (float64)."""
    s = scores.double()
    return (s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True).clamp_min(1e-30)


def _check(scores: Tensor) -> Tensor:
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise ShapeError("scores must be a [Q, N] tensor of per-query attribution scores, got "
                         f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)}.")
    if scores.shape[0] < 2 or scores.shape[1] < 4:
        raise ShapeError(f"pooling needs >= 2 queries and >= 4 training samples, got "
                         f"{tuple(scores.shape)}.")
    check_finite("scores", scores)
    return zscore_rows(scores)


def _neighbour_order(z: Tensor, cols: Tensor | None = None) -> Tensor:
    """``[Q, Q-1]`` other queries, most similar first (row correlation on ``cols``)."""
    x = z if cols is None else zscore_rows(z[:, cols])
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    return torch.argsort(-sim, dim=1, stable=True)[:, : z.shape[0] - 1]


def pool_scores(scores: Tensor, k: int) -> Tensor:
    """``[Q, N]``: mean z-scored scores of each query and its ``k`` most similar other queries.

    Args:
        scores: ``[Q, N]`` per-query scores (any method; rows are z-scored first).
        k: neighbours per query, ``0 <= k <= Q - 1`` (0 returns the z-scored input).

    Raises ShapeError for a non-``[Q, N]`` input, ConfigError for ``k`` out of range.
    """
    z = _check(scores)
    q = z.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= q - 1:
        raise ConfigError(f"k must be an int in [0, {q - 1}] (other queries), got {k!r}.")
    if k == 0:
        return z
    nb = _neighbour_order(z)[:, :k]
    return (z + z[nb].sum(1)) / (k + 1)


def loo_gain(scores: Tensor, ks: Sequence[int], m: int = 32, seed: int = 0, n_splits: int = 4
             ) -> dict[int, float]:
    """Leave-one-out check of pooling: how highly does a query itself score the training
    samples that its ``k`` neighbours (without it) put on top?

    The training columns are split at random into halves ``A`` and ``B``. Neighbours are
    ranked by row correlation on ``A``; on ``B`` the neighbours' mean z-score picks the top
    ``m`` samples, and the gain is the query's own z-score on them, averaged over queries,
    both halves in turn and ``n_splits`` random splits. Returns ``{k: gain}`` (higher is
    better; about 0 for neighbours that share nothing with the query). With noise independent
    across queries, the query's own noise is independent of its neighbours' choice, so the
    gain estimates the true (noise-free) score of that top ``m``.

    Raises ConfigError for ``k`` outside ``[1, Q - 1]`` or ``m`` outside ``[1, N/2)``.
    """
    z = _check(scores)
    q, n = z.shape
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= q - 1]
    if bad or not ks:
        raise ConfigError(f"ks must be ints in [1, {q - 1}], got {list(ks)!r}.")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < n // 2:
        raise ConfigError(f"m must be an int in [1, {n // 2 - 1}], got {m!r}.")
    g = torch.Generator().manual_seed(seed)
    gain = {k: 0.0 for k in ks}
    for _ in range(n_splits):
        perm = torch.randperm(n, generator=g)
        halves = (perm[: n // 2], perm[n // 2:])
        for a, b in (halves, halves[::-1]):
            nb = _neighbour_order(z, a)
            zb = zscore_rows(z[:, b])
            for k in ks:
                top = torch.topk(zb[nb[:, :k]].mean(1), m, dim=1).indices
                gain[k] += float(zb.gather(1, top).mean()) / (2 * n_splits)
    return gain


@dataclass(frozen=True)
class PoolChoice:
    """The chosen ``k``, the leave-one-out ``gains`` per candidate, and the pooled scores."""

    k: int
    gains: dict[int, float]
    scores: Tensor


def default_ks(q: int) -> list[int]:
    """Candidate neighbour counts: 1, 2, 4, ... below ``Q - 1``, and ``Q - 1`` (all)."""
    ks, k = [], 1
    while k < q - 1:
        ks.append(k)
        k *= 2
    return ks + [q - 1]


def choose_pooling(scores: Tensor, ks: Sequence[int] | None = None, m: int = 32, seed: int = 0
                   ) -> PoolChoice:
    """Pool per-query scores with the ``k`` of highest leave-one-out gain (see module doc).

    Args:
        scores: ``[Q, N]`` per-query scores of ``Q >= 2`` bad answers.
        ks: candidate ``k`` (default :func:`default_ks`).
        m: size of the top of the ranking the criterion looks at (:func:`loo_gain`; lowered
            to ``N // 2 - 1`` for small training sets).
        seed: seed of the column splits.

    Returns :class:`PoolChoice` with ``scores`` ``[Q, N]`` float64 = :func:`pool_scores` at the
    chosen ``k``.
    """
    z = _check(scores)
    cand = list(ks) if ks is not None else default_ks(z.shape[0])
    gains = loo_gain(z, cand, m=max(1, min(m, z.shape[1] // 2 - 1)), seed=seed)
    best = max(cand, key=lambda k: (gains[k], -k))
    return PoolChoice(best, gains, pool_scores(z, best))
