"""Shared driver of the linear finders: validate inputs, fit, orient, add evidence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mechunlearn.directions.base import (
    Directions,
    fingerprint_of,
    groups_array,
    labelled,
    site_of,
    warn_if_null,
)
from mechunlearn.directions.evidence import N_SPLITS, auc, evaluate
from mechunlearn.errors import ConfigError

BasisFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict[str, list[float]], Any]]
"""``basis_fn(X [n, d] f64, y [n] bool) -> (basis [k, d], per-direction scores, eraser|None)``."""


def orient(basis: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip rows of ``basis [k, d]`` so X+ has the larger mean coordinate; also return the
    (now non-negative) mean differences ``[k]``."""
    c = X @ basis.T
    diff = c[y].mean(0) - c[~y].mean(0)
    sign = np.where(diff < 0, -1.0, 1.0)
    return basis * sign[:, None], diff * sign


def check_evidence_args(n_splits: int, n_permutations: int, alpha: float) -> None:
    """Validate the evidence options shared by every finder."""
    if not isinstance(n_splits, int) or n_splits < 2:
        raise ConfigError(f"n_splits must be an int >= 2, got {n_splits!r}.")
    if not isinstance(n_permutations, int) or n_permutations < 0:
        raise ConfigError(f"n_permutations must be an int >= 0, got {n_permutations!r}.")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")


def run_finder(
    method: str,
    basis_fn: BasisFn,
    x_pos: Any,
    x_neg: Any,
    *,
    labels: Any = None,
    groups: Any = None,
    site: Any = None,
    settings: dict[str, Any],
    n_splits: int = N_SPLITS,
    n_permutations: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
) -> Directions:
    """Fit ``basis_fn`` on all data, then held-out AUC + permutation test of the procedure.

    ``n_permutations=0`` skips the permutation test; ``n_splits`` folds for held-out AUC.
    """
    check_evidence_args(n_splits, n_permutations, alpha)
    with blas_threads():
        return _run(method, basis_fn, x_pos, x_neg, labels, groups, site, settings, n_splits,
                    n_permutations, alpha, seed)


def blas_threads() -> Any:
    """Context limiting BLAS/OpenMP threads to ``torch.get_num_threads()``.

    Many small SVDs / solves with a multi-threaded OpenBLAS on a busy machine were ~20x
    slower (CPU time) than single-threaded ones; thread counts follow the user's torch setting.
    """
    import torch
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=torch.get_num_threads())


def _run(method: str, basis_fn: BasisFn, x_pos: Any, x_neg: Any, labels: Any, groups: Any,
         site: Any, settings: dict[str, Any], n_splits: int, n_permutations: int,
         alpha: float, seed: int) -> Directions:
    X, y = labelled(x_pos, x_neg, labels)
    g = groups_array(groups, len(X))
    site_ = site_of(x_pos, x_neg, site=site)
    basis, scores, eraser = basis_fn(X, y)
    basis, diff = orient(basis, X, y)
    scores = dict(scores)
    scores["mean_diff"] = diff.tolist()
    scores["train_auc"] = [auc(X @ b, y) for b in basis]

    def fit(train: np.ndarray, yy: np.ndarray):
        b, _, _ = basis_fn(X[train], yy[train])
        w = orient(b[:1], X[train], yy[train])[0][0]
        return lambda test: X[test] @ w

    ev = evaluate(fit, y, g, n_splits, n_permutations, seed)
    scores.update(ev.as_scores())
    scores["fold_aucs"] = list(ev.fold_aucs)
    scores["null_aucs"] = list(ev.null_aucs)
    all_settings = dict(settings, n_splits=n_splits, n_permutations=n_permutations, alpha=alpha,
                        seed=seed, grouped=g is not None, n_pos=int(y.sum()), n_neg=int((~y).sum()))
    dirs = Directions(basis, scores, site_, method, all_settings, eraser,
                      fingerprint_of(x_pos, x_neg))
    warn_if_null(dirs)
    return dirs
