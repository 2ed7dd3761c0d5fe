"""Logistic-regression probe (scikit-learn): the direction is the decision normal.

Features are standardised for the fit (near-constant dimensions are dropped first, see
``near_constant_dims``), and the normal is mapped back to raw feature space
(``w_raw = coef / std``) before normalising, so the direction lives in the Site's space.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechunlearn.directions._fit import run_finder
from mechunlearn.directions.base import Directions, near_constant_dims
from mechunlearn.directions.evidence import N_SPLITS
from mechunlearn.errors import ConfigError


def probe_basis(
    X: np.ndarray, y: np.ndarray, C: float = 1.0, max_iter: int = 1000, seed: int = 0
) -> tuple[np.ndarray, dict[str, list[float]], None]:
    """Fit the probe on ``X [n, d]``, ``y [n]``; return its unit normal ``[1, d]`` (raw space)."""
    from sklearn.linear_model import LogisticRegression

    keep = ~near_constant_dims(X)
    Xk = X[:, keep]
    mu, sd = Xk.mean(0), Xk.std(0)
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit((Xk - mu) / sd, y)
    w = np.zeros(X.shape[1])
    w[keep] = clf.coef_[0] / sd
    norm = float(np.linalg.norm(w))
    if norm == 0:
        raise ConfigError("The probe's weights are all zero (no signal, or C too small).")
    return (w / norm)[None], {"coef_norm": [float(np.linalg.norm(clf.coef_))]}, None


def probe(
    x_pos: Any,
    x_neg: Any = None,
    *,
    labels: Any = None,
    C: float = 1.0,
    max_iter: int = 1000,
    groups: Any = None,
    site: Any = None,
    n_splits: int = N_SPLITS,
    n_permutations: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
) -> Directions:
    """L2 logistic-regression probe separating X+ ``[n+, d]`` from X− ``[n−, d]``.

    Args:
        C: inverse regularisation strength (scikit-learn's).
        max_iter: solver iterations.
        Other arguments as in every finder (labels / groups / evidence options).
    """
    if not C > 0:
        raise ConfigError(f"C must be > 0, got {C!r}.")

    def basis_fn(X: np.ndarray, y: np.ndarray):
        return probe_basis(X, y, C, max_iter, seed)

    return run_finder("probe", basis_fn, x_pos, x_neg, labels=labels, groups=groups, site=site,
                      settings={"C": C, "max_iter": max_iter}, n_splits=n_splits,
                      n_permutations=n_permutations, alpha=alpha, seed=seed)
