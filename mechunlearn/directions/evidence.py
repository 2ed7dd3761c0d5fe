"""Held-out evidence for a direction: cross-validated AUC and a permutation test.

A direction fitted on a few hundred samples always separates its own training data. Here the
*whole fitting procedure* is rerun on training folds and scored on held-out folds (random
stratified folds, or whole groups such as prompt templates held out together); then the same
is done with shuffled labels ``n_permutations`` times. The p-value is
``(1 + #{null AUC >= observed AUC}) / (1 + n_permutations)``.

Shuffling respects groups: if labels are constant within every group, group labels are
permuted; otherwise (e.g. groups are contrast pairs holding one X+ and one X−) labels are
shuffled within each group. Without groups, labels are shuffled globally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mechunlearn.errors import ConfigError, EmptyDataError

#: folds of the held-out evidence, every finder's default ``n_splits`` (groups are held
#: out whole, so a contrast needs at least this many distinct groups)
N_SPLITS = 5

Scorer = Callable[[np.ndarray], np.ndarray]
FitFn = Callable[[np.ndarray, np.ndarray], Scorer]
"""``fit(train_idx [m], y [n] bool) -> scorer``; ``scorer(test_idx [t]) -> scores [t]``."""


@dataclass(frozen=True)
class Evidence:
    """Held-out AUC of a fitting procedure and its permutation null.

    Attributes:
        auc: mean held-out AUC over folds (0.5 = chance; > 0.5 = X+ scores higher).
        fold_aucs: per-fold AUCs.
        null_aucs: the same statistic with shuffled labels, one per permutation.
        p_value: one-sided permutation p-value (``nan`` when ``n_permutations == 0``).
    """

    auc: float
    fold_aucs: tuple[float, ...]
    null_aucs: tuple[float, ...]
    p_value: float

    def as_scores(self) -> dict[str, float]:
        """Flat dict for :attr:`Directions.scores`."""
        null = np.asarray(self.null_aucs) if self.null_aucs else np.asarray([np.nan])
        return {
            "heldout_auc": float(self.auc),
            "p_value": float(self.p_value),
            "null_auc_mean": float(np.mean(null)),
            "null_auc_q05": float(np.quantile(null, 0.05)),
            "null_auc_q95": float(np.quantile(null, 0.95)),
            "n_permutations": len(self.null_aucs),
        }


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of ``scores [n]`` for binary ``y [n]`` (ties count half); nan if one class."""
    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    r = ((ends - counts + 1 + ends) / 2)[inv]  # average ranks, ties share
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def folds(
    y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: stratified k-fold, or k-fold over whole groups (groups
    sorted by their share of X+ and dealt out, so folds stay balanced)."""
    if n_splits < 2:
        raise ConfigError(f"n_splits must be >= 2, got {n_splits}.")
    n_min = min(int(y.sum()), int((~y).sum()))
    if groups is None:
        if n_min < n_splits:
            raise EmptyDataError(
                f"The smaller class has {n_min} samples; {n_splits}-fold held-out evaluation "
                "needs at least one per fold. Use fewer n_splits or more data."
            )
        rng = np.random.default_rng(seed)
        fold_of = np.empty(len(y), dtype=np.int64)
        offset = 0
        for cls in (np.nonzero(y)[0], np.nonzero(~y)[0]):  # stratified: deal each class out
            fold_of[rng.permutation(cls)] = (np.arange(len(cls)) + offset) % n_splits
            offset += len(cls)
        idx = np.arange(len(y))
        return [(idx[fold_of != k], idx[fold_of == k]) for k in range(n_splits)]
    uniq, inv = np.unique(groups, return_inverse=True)
    if len(uniq) < n_splits:
        raise EmptyDataError(f"{len(uniq)} groups cannot fill {n_splits} folds; use fewer n_splits.")
    # stratify groups by their share of X+, then deal them out in shuffled order
    share = np.bincount(inv, weights=y.astype(float)) / np.bincount(inv)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(uniq)), share))
    group_fold = np.empty(len(uniq), dtype=np.int64)
    group_fold[order] = (np.arange(len(uniq)) + rng.integers(n_splits)) % n_splits
    fold_of = group_fold[inv]
    idx = np.arange(len(y))
    return [(idx[fold_of != k], idx[fold_of == k]) for k in range(n_splits)]


def heldout_auc(
    fit: FitFn, y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> tuple[float, tuple[float, ...]]:
    """Mean held-out AUC of ``fit`` over folds. Folds whose train or test side lacks a
    class, or whose fit is degenerate (the finder raises ``ConfigError``, e.g. identical class
    means on that fold), are skipped."""
    out = []
    for train, test in folds(y, groups, n_splits, seed):
        if y[train].all() or not y[train].any():
            continue
        try:
            scorer = fit(train, y)
        except ConfigError:
            continue
        a = auc(scorer(test), y[test])
        if not np.isnan(a):
            out.append(a)
    if not out:
        raise EmptyDataError("No fold had both classes on its train and test sides and a "
                             "non-degenerate fit.")
    return float(np.mean(out)), tuple(out)


def permute(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Labels shuffled as described in the module docstring."""
    if groups is None:
        return rng.permutation(y)
    _, inv = np.unique(groups, return_inverse=True)
    pos, size = np.bincount(inv, weights=y.astype(float)), np.bincount(inv)
    if np.all((pos == 0) | (pos == size)):  # labels constant within groups: permute groups
        return rng.permutation(pos > 0)[inv]
    by_group = np.argsort(inv, kind="stable")
    shuffled = np.lexsort((rng.random(len(y)), inv))  # group-sorted, random within a group
    out = np.empty_like(y)
    out[by_group] = y[shuffled]
    return out


def evaluate(
    fit: FitFn,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    n_splits: int = N_SPLITS,
    n_permutations: int = 100,
    seed: int = 0,
) -> Evidence:
    """Held-out AUC of a fitting procedure plus its permutation null.

    Args:
        fit: ``fit(train_idx, y) -> scorer``; must use only ``y[train_idx]``.
        y: ``[n]`` bool labels (True = X+).
        groups: optional ``[n]`` group ids held out together (e.g. template ids).
        n_splits: number of folds.
        n_permutations: label shuffles (0 skips the test; ``p_value`` is then nan).
        seed: seeds the folds and the shuffles.
    """
    if n_permutations < 0:
        raise ConfigError(f"n_permutations must be >= 0, got {n_permutations}.")
    observed, fold_aucs = heldout_auc(fit, y, groups, n_splits, seed)
    rng = np.random.default_rng(seed)
    null = []
    for i in range(n_permutations):
        yp = permute(y, groups, rng)
        try:
            null.append(heldout_auc(fit, yp, groups, n_splits, seed + 1 + i)[0])
        except EmptyDataError:
            continue
    p = (1 + sum(a >= observed for a in null)) / (1 + len(null)) if null else float("nan")
    return Evidence(observed, fold_aucs, tuple(null), float(p))
