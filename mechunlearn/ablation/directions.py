"""Direction choice for weight ablation: mean, median or PCA of differences, PCA bias ranking.

Given features ``x_pos [n+, d]`` (the behaviour to remove, e.g. the tuned model at the decision
token) and ``x_neg [n−, d]`` (e.g. the SFT model on the same prompts), :func:`diff_directions`
returns an orthonormal basis ``[k, d]`` (float32), each row oriented so that X+ has the larger
mean coordinate:

* ``"mean"``: difference of means, the direction of "Refusal in Language Models Is Mediated by
  a Single Direction" (Arditi et al., arXiv:2406.11717);
* ``"median"``: per-dimension median of the differences (robust to a few outlying pairs);
* ``"pca"``: top right singular vectors of the *uncentred* difference matrix (its second
  moment), so the first one is the dominant consistent difference and later ones the main
  ways the differences vary;
* ``"pca_bias"`` / ``"pca_bias_literal"``: principal components of X+ ∪ X− ranked by the
  bias/variance ratio |E[φ·ρ]| / Std(φ·ρ) (scale-free) or |E[φ·ρ]| / Var(φ·ρ) (the literal
  ratio of the "Automatic Reinforcement Unlearning" blog post), see
  :func:`mechunlearn.directions.pca_bias`.

Differences: with ``paired=True`` (default when ``n+ == n−``) row i of X+ and X− answer the
same prompt and ``D_i = x_pos_i − x_neg_i``; unpaired, ``D_i = x_pos_i − mean(x_neg)``.
``k > 1`` with ``"mean"`` / ``"median"`` gives that direction followed by the top ``k − 1``
principal directions of the differences with it projected out (a multi-direction basis).

:func:`layer_directions` does this per layer (``[L, k, d]``) and :func:`interpolate` gives the
direction at a *fractional* layer index (linear interpolation between the two neighbouring
layers, renormalised), as in the Heretic abliteration tool (github.com/p-e-w/heretic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite

METHODS = ("mean", "median", "pca", "pca_bias", "pca_bias_literal")


def _as_array(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, (Tensor, np.ndarray)):
        x = getattr(x, "values", x)  # Features
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, float)
    if a.ndim != 2:
        raise ShapeError(f"{name} must be [n, d], got shape {a.shape}.")
    if len(a) < 2:
        raise EmptyDataError(f"{name} needs at least 2 samples, got {len(a)}.")
    check_finite(name, torch.from_numpy(a))
    return a


def _orient(v: np.ndarray, gap: np.ndarray) -> np.ndarray:
    return -v if float(v @ gap) < 0 else v


def _top_pcs(D: np.ndarray, k: int) -> np.ndarray:
    _, s, vt = np.linalg.svd(D, full_matrices=False)
    keep = s > 1e-10 * max(float(s[0]), 1e-300) if len(s) else s.astype(bool)
    return vt[keep][:k]


def _pca_bias(xp: np.ndarray, xn: np.ndarray, k: int, ratio: str) -> np.ndarray:
    from mechunlearn.directions.pca_bias import bias_ratios, pca_components

    X = np.concatenate([xp, xn])
    y = np.r_[np.ones(len(xp), bool), np.zeros(len(xn), bool)]
    comps, _ = pca_components(X, True, None, 1e-6)
    if len(comps) == 0:
        raise ConfigError("All features are constant: PCA found no component with variance.")
    order = np.argsort(-bias_ratios(X, y, comps, True)[ratio], kind="stable")[:k]
    return comps[order]


def diff_directions(x_pos: Any, x_neg: Any, method: str = "mean", k: int = 1,
                    paired: bool | None = None) -> Tensor:
    """Orthonormal basis ``[k, d]`` (float32) separating X+ from X− (see module docstring).

    Args:
        x_pos, x_neg: ``[n+, d]`` and ``[n−, d]`` (Tensor, array or ``Features``).
        method: one of :data:`METHODS`.
        k: number of directions.
        paired: rows of X+ and X− answer the same prompts (default: ``n+ == n−``).

    Raises:
        ConfigError: unknown method, bad ``k``, ``paired=True`` with unequal counts, or fewer
            than ``k`` non-null directions.
        ShapeError / EmptyDataError / NonFiniteError: bad features.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}.")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}.")
    xp, xn = _as_array(x_pos, "x_pos"), _as_array(x_neg, "x_neg")
    if xp.shape[1] != xn.shape[1]:
        raise ShapeError(f"x_pos has d={xp.shape[1]}, x_neg d={xn.shape[1]}.")
    if paired is None:
        paired = len(xp) == len(xn)
    if paired and len(xp) != len(xn):
        raise ConfigError(f"paired=True needs as many X+ as X− rows ({len(xp)} vs {len(xn)}).")
    D = xp - xn if paired else xp - xn.mean(0)
    gap = xp.mean(0) - xn.mean(0)
    if method.startswith("pca_bias"):
        basis = _pca_bias(xp, xn, k, "literal" if method.endswith("literal") else "scale_free")
    elif method == "pca":
        basis = _top_pcs(D, k)
    else:
        first = D.mean(0) if method == "mean" else np.median(D, axis=0)
        norm = float(np.linalg.norm(first))
        if norm < 1e-12:
            raise ConfigError(f"The {method} of the differences is zero: no direction.")
        first = first / norm
        rest = _top_pcs(D - np.outer(D @ first, first), k - 1) if k > 1 else np.zeros((0, len(first)))
        basis = np.concatenate([first[None], rest])
    if len(basis) < k:
        raise ConfigError(f"Only {len(basis)} non-null direction(s) for k={k} ({method}).")
    q, _ = np.linalg.qr(basis.T)  # orthonormalise in float64, keep the order
    q = q.T[:k]
    q = np.stack([_orient(v, gap if float(np.abs(v @ gap)) > 1e-12 else D.mean(0)) for v in q])
    return torch.from_numpy(q).float()


def layer_directions(pos_by_layer: Sequence[Any], neg_by_layer: Sequence[Any],
                     method: str = "mean", k: int = 1, paired: bool | None = None) -> Tensor:
    """:func:`diff_directions` at every layer: ``[L, k, d]`` from L pairs of ``[n, d]``."""
    if len(pos_by_layer) != len(neg_by_layer) or len(pos_by_layer) == 0:
        raise ShapeError(
            f"Need one X+ and one X− per layer, got {len(pos_by_layer)} and {len(neg_by_layer)}."
        )
    return torch.stack([diff_directions(p, n, method, k, paired)
                        for p, n in zip(pos_by_layer, neg_by_layer)])


def interpolate(directions: Tensor, index: float) -> Tensor:
    """Unit direction ``[d]`` at fractional layer ``index`` from per-layer ``[L, d]`` (or
    ``[L, 1, d]``): ``normalise((1 − t)·u_i + t·u_{i+1})`` with ``i = floor(index)``,
    ``t = index − i``. An integer index returns that layer's direction.

    Raises ConfigError for an index outside ``[0, L − 1]`` or when the two neighbours cancel.
    """
    u = directions
    if u.ndim == 3:
        if u.shape[1] != 1:
            raise ConfigError(f"interpolate() takes one direction per layer, got k={u.shape[1]}.")
        u = u[:, 0]
    if u.ndim != 2:
        raise ShapeError(f"directions must be [L, d] or [L, 1, d], got {tuple(directions.shape)}.")
    n = u.shape[0]
    if not (isinstance(index, (int, float)) and math.isfinite(index) and 0 <= index <= n - 1):
        raise ConfigError(f"direction index must be in [0, {n - 1}], got {index!r}.")
    i = min(int(math.floor(index)), n - 1)
    t = float(index) - i
    v = u[i].double() if t == 0 else (1 - t) * u[i].double() + t * u[i + 1].double()
    norm = float(v.norm())
    if norm < 1e-8:
        raise ConfigError(f"Directions of layers {i} and {i + 1} cancel at index {index}.")
    return (v / norm).float()
