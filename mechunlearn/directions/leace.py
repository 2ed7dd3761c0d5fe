"""LEACE (Belrose et al. 2023) via the ``concept-erasure`` package: an eraser and a direction.

``leace(x_pos, x_neg)`` fits ``concept_erasure.LeaceFitter`` with the binary concept
z = [x ∈ X+] and returns :class:`Directions` whose ``eraser`` is a
``concept_erasure.LeaceEraser`` (use it with ``interventions.Erase``) and whose basis is the
direction the eraser edits (its left factor; rank 1 for a binary concept). LEACE edits
*along* that direction but *removes* the concept's linear information, which is measured in
the whitened geometry, so the edit is oblique, not an orthogonal projection.

Near-constant dimensions (e.g. MiniLM's LayerNorm dims with scale ~1e-33) are dropped before
fitting, because LEACE whitens; the eraser leaves them unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from mechunlearn.directions._fit import run_finder
from mechunlearn.directions.base import Directions, near_constant_dims
from mechunlearn.directions.evidence import N_SPLITS
from mechunlearn.errors import ConfigError


def fit_eraser(
    X: np.ndarray,
    y: np.ndarray,
    method: Literal["leace", "orth"] = "leace",
    drop_constant: bool = True,
    **kwargs: Any,
) -> Any:
    """``LeaceEraser`` for ``X [n, d]`` and binary ``y [n]``, embedded back into all ``d``
    dims when near-constant dims were dropped. Factors are float64 and trimmed to rank."""
    from concept_erasure import LeaceEraser, LeaceFitter

    keep = ~near_constant_dims(X) if drop_constant else np.ones(X.shape[1], bool)
    x = torch.from_numpy(X[:, keep])
    z = torch.from_numpy(y.astype(np.float64))[:, None]
    er = LeaceFitter.fit(x, z, method=method, **kwargs).eraser
    left, right = er.proj_left, er.proj_right
    col = left.norm(dim=0) * right.norm(dim=1)
    live = col > 1e-12 * max(float(col.max()), 1e-300)
    left, right = left[:, live], right[live]
    d, r = X.shape[1], int(live.sum())
    kt = torch.from_numpy(keep)
    L = torch.zeros(d, r, dtype=torch.float64)
    R = torch.zeros(r, d, dtype=torch.float64)
    L[kt], R[:, kt] = left, right
    bias = None
    if er.bias is not None:
        bias = torch.from_numpy(X.mean(0)).clone()
        bias[kt] = er.bias
    return LeaceEraser(L, R, bias)


def leace(
    x_pos: Any,
    x_neg: Any = None,
    *,
    labels: Any = None,
    method: Literal["leace", "orth"] = "leace",
    drop_constant: bool = True,
    groups: Any = None,
    site: Any = None,
    n_splits: int = N_SPLITS,
    n_permutations: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
    **fitter_kwargs: Any,
) -> Directions:
    """Fit LEACE on X+ ``[n+, d]`` vs X− ``[n−, d]`` (or ``X, labels``).

    Args:
        method: ``"leace"`` (least-squares optimal) or ``"orth"`` (orthogonal projection).
        drop_constant: leave near-constant dims out of the fit (recommended).
        fitter_kwargs: passed to ``LeaceFitter`` (``affine``, ``shrinkage``, ``svd_tol``,
            ``constrain_cov_trace``).

    Returns:
        :class:`Directions` with ``eraser`` set; basis = unit edit direction ``[1, d]``.
    """
    if method not in ("leace", "orth"):
        raise ConfigError(f"method must be 'leace' or 'orth', got {method!r}.")

    def basis_fn(X: np.ndarray, y: np.ndarray):
        er = fit_eraser(X, y, method, drop_constant, **fitter_kwargs)
        if er.proj_left.shape[1] == 0:
            raise ConfigError("LEACE found no concept direction (cross-covariance is zero).")
        w = er.proj_left[:, 0].numpy()
        return (w / np.linalg.norm(w))[None], {"rank": [int(er.proj_left.shape[1])]}, er

    settings = {"method": method, "drop_constant": drop_constant, **fitter_kwargs}
    return run_finder("leace", basis_fn, x_pos, x_neg, labels=labels, groups=groups, site=site,
                      settings=settings, n_splits=n_splits, n_permutations=n_permutations,
                      alpha=alpha, seed=seed)
