"""Difference of class means, normalised: ω = (E[φ|X+] − E[φ|X−]) / ‖·‖."""

from __future__ import annotations

from typing import Any

import numpy as np

from mechunlearn.directions._fit import run_finder
from mechunlearn.directions.base import Directions
from mechunlearn.directions.evidence import N_SPLITS
from mechunlearn.errors import ConfigError


def mean_diff_basis(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, list[float]], None]:
    """``X [n, d]``, ``y [n]`` -> unit mean-difference ``[1, d]`` and its norm."""
    diff = X[y].mean(0) - X[~y].mean(0)
    norm = float(np.linalg.norm(diff))
    if norm == 0:
        raise ConfigError("X+ and X− have identical means: the mean difference is the zero vector.")
    return (diff / norm)[None], {"norm": [norm]}, None


def mean_diff(
    x_pos: Any,
    x_neg: Any = None,
    *,
    labels: Any = None,
    groups: Any = None,
    site: Any = None,
    n_splits: int = N_SPLITS,
    n_permutations: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
) -> Directions:
    """Normalised difference of means of X+ ``[n+, d]`` and X− ``[n−, d]`` (or ``X, labels``).

    ``scores["norm"]`` is ‖E[φ|X+] − E[φ|X−]‖; evidence as in every finder.
    """
    return run_finder("mean_diff", mean_diff_basis, x_pos, x_neg, labels=labels, groups=groups,
                      site=site, settings={}, n_splits=n_splits, n_permutations=n_permutations,
                      alpha=alpha, seed=seed)
