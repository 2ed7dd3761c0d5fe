"""Seed 003's PCA bias/variance ranking.

PCA on φ(X+ ∪ X−); for each principal component ρ and each class c ∈ {X+, X−} compute
``|E_c[φ·ρ]| / Var_c(φ·ρ)`` (``ratio="literal"``, the seed's formula) or
``|E_c[φ·ρ]| / Std_c(φ·ρ)`` (``ratio="scale_free"``, the default), average over the two
classes, and rank components by it.

Why the default is scale-free: the literal ratio has units of 1/scale, so a component with
tiny variance gets a huge ratio whatever its mean; on real encoder features it ranked a
near-zero-variance component first (see docs/directions.md). Why centering and |·|: with
φ centred on the pooled mean, E_+[φ·ρ] = (n−/n)Δ and E_−[φ·ρ] = −(n+/n)Δ for the mean gap Δ
along ρ, so the *signed* average cancels for balanced classes and the sign of ρ (arbitrary in
an SVD) would flip it; averaging absolute values makes the score sign-free and ≈ Δ/2 over the
class spread. Without centering (``center=False``) the score also measures where the origin
is, not only the gap between the classes. Each returned ρ is oriented so X+ has the larger
mean, and ``scores["mean_diff"]`` is that gap E_+[φ·ρ] − E_−[φ·ρ].
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from mechunlearn.directions._fit import run_finder
from mechunlearn.directions.base import Directions
from mechunlearn.directions.evidence import N_SPLITS
from mechunlearn.errors import ConfigError

Ratio = Literal["scale_free", "literal"]


def bias_ratios(
    X: np.ndarray, y: np.ndarray, components: np.ndarray, center: bool = True
) -> dict[str, np.ndarray]:
    """Both ratios per component.

    Args:
        X: ``[n, d]`` features; y: ``[n]`` bool (True = X+); components: ``[m, d]`` unit rows.

    Returns:
        ``{"literal": [m], "scale_free": [m]}``, each averaged over the two classes.
    """
    mu = X.mean(0) if center else np.zeros(X.shape[1])
    proj = (X - mu) @ components.T
    total_var = float(proj.var(0, ddof=1).max()) if len(X) > 1 else 1.0
    floor = max(total_var, 1e-300) * 1e-12
    lit, sf = [], []
    for cls in (y, ~y):
        m = np.abs(proj[cls].mean(0))
        v = np.maximum(proj[cls].var(0, ddof=1), floor)
        lit.append(m / v)
        sf.append(m / np.sqrt(v))
    return {"literal": (lit[0] + lit[1]) / 2, "scale_free": (sf[0] + sf[1]) / 2}


def pca_components(
    X: np.ndarray, center: bool, n_components: int | None, min_var_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes ``[m, d]`` and their variances ``[m]``, dropping axes whose variance is
    below ``min_var_ratio`` × the largest (numerically null directions)."""
    mu = X.mean(0) if center else np.zeros(X.shape[1])
    _, s, vt = np.linalg.svd(X - mu, full_matrices=False)
    var = s**2 / max(len(X) - 1, 1)
    keep = var > min_var_ratio * var[0] if var[0] > 0 else np.zeros_like(var, bool)
    vt, var = vt[keep], var[keep]
    if n_components is not None:
        vt, var = vt[:n_components], var[:n_components]
    return vt, var


def pca_bias(
    x_pos: Any,
    x_neg: Any = None,
    *,
    labels: Any = None,
    k: int = 1,
    ratio: Ratio = "scale_free",
    center: bool = True,
    n_components: int | None = None,
    min_var_ratio: float = 1e-6,
    groups: Any = None,
    site: Any = None,
    n_splits: int = N_SPLITS,
    n_permutations: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
) -> Directions:
    """Top-``k`` principal components of X+ ∪ X− ranked by the bias/variance ratio.

    Args:
        x_pos, x_neg: ``[n+, d]``, ``[n−, d]`` features (Tensor / array / Features), or
            ``x_pos=X [n, d]`` with ``labels=[n]`` (True = X+).
        k: number of directions returned (best first).
        ratio: ``"scale_free"`` (|mean| / std, default) or ``"literal"`` (|mean| / var, seed).
        center: centre on the pooled mean before PCA and the ratio (recommended).
        n_components: consider only the first principal components (default all non-null).
        min_var_ratio: components with variance below this × the top variance are ignored.
        groups, n_splits, n_permutations, alpha, seed: held-out evidence (see ``evidence``).

    Returns:
        :class:`Directions` with ``scores``: ``ratio`` (the ranking score), ``ratio_literal``,
        ``ratio_scale_free``, ``variance``, ``component`` (PCA index), ``mean_diff``,
        ``train_auc`` per direction, and held-out evidence for the top one.
    """
    if ratio not in ("scale_free", "literal"):
        raise ConfigError(f"ratio must be 'scale_free' or 'literal', got {ratio!r}.")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}.")

    def basis_fn(X: np.ndarray, y: np.ndarray):
        comps, var = pca_components(X, center, n_components, min_var_ratio)
        if len(comps) == 0:
            raise ConfigError("All features are constant: PCA found no component with variance.")
        r = bias_ratios(X, y, comps, center)
        order = np.argsort(-r[ratio], kind="stable")[:k]
        scores = {
            "ratio": r[ratio][order].tolist(),
            "ratio_literal": r["literal"][order].tolist(),
            "ratio_scale_free": r["scale_free"][order].tolist(),
            "variance": var[order].tolist(),
            "component": order.tolist(),
        }
        return comps[order], scores, None

    settings = {"k": k, "ratio": ratio, "center": center, "n_components": n_components,
                "min_var_ratio": min_var_ratio}
    return run_finder("pca_bias", basis_fn, x_pos, x_neg, labels=labels, groups=groups,
                      site=site, settings=settings, n_splits=n_splits,
                      n_permutations=n_permutations, alpha=alpha, seed=seed)
