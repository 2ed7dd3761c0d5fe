"""Input handling shared by the finders: X+ / X− or ``(X, labels)`` as validated float64
arrays (from tensors, arrays, :class:`~mechunlearn.features.Features` or a FeatureStore),
optional group ids, and detection of near-constant dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite
from mechunlearn.features import Features
from mechunlearn.sites import Site


def as_matrix(name: str, x: Any) -> np.ndarray:
    """Features ``x`` (Tensor / array / Features / FeatureStore, ``[n, d]``) as a float64
    array, validated."""
    if _is_store(x):
        x = x.load()
    if isinstance(x, Features):
        x = x.values
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"{name} must be a numeric [n, d] tensor/array, got {type(x).__name__}.") from e
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be [n, d], got shape {arr.shape}.")
    if arr.shape[1] == 0:
        raise ShapeError(f"{name} has zero feature dimensions (shape {arr.shape}).")
    check_finite(name, arr)
    return arr


def site_of(*xs: Any, site: Site | None = None) -> Site | None:
    """The explicit ``site``, else the Site of the first :class:`Features` among ``xs``."""
    if site is not None:
        if not isinstance(site, Site):
            raise ConfigError(f"site must be a Site, got {type(site).__name__}.")
        return site
    for x in xs:
        if isinstance(x, Features) or _is_store(x):
            return x.site
    return None


def fingerprint_of(*xs: Any) -> str | None:
    """The model fingerprint shared by every :class:`Features`/store among ``xs``.

    ``None`` when none carries one, or when they come from different models (e.g. a contrast
    between a tuned and a reference model: then no single model is "the" one to check).
    """
    fps = {x.fingerprint for x in xs if isinstance(x, Features) or _is_store(x)}
    return fps.pop() if len(fps) == 1 else None


def _is_store(x: Any) -> bool:
    return type(x).__name__ == "FeatureStore" and hasattr(x, "load") and hasattr(x, "site")


def labelled(
    x_pos: Any, x_neg: Any = None, labels: Any = None, min_per_class: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Stack X+ and X− (or take labelled ``X``) into ``X [n, d]`` float64 and ``y [n]`` bool.

    Either ``x_pos`` and ``x_neg`` (rows of each class) or ``x_pos=X`` with ``labels`` (1/True
    for the reinforced class X+). Each class needs ``min_per_class`` samples.
    """
    if labels is not None:
        if x_neg is not None:
            raise ConfigError("Pass either (x_pos, x_neg) or (X, labels=...), not both.")
        X = as_matrix("X", x_pos)
        y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels)
        if y.ndim != 1 or len(y) != len(X):
            raise ShapeError(f"labels must be [n] = [{len(X)}], got shape {y.shape}.")
        uniq = set(np.unique(y).tolist())
        if not uniq <= {0, 1}:
            raise ConfigError(f"labels must be binary (0/1 or bool), got values {sorted(uniq)[:5]}.")
        y = y.astype(bool)
    else:
        if x_neg is None:
            raise ConfigError("Pass X− (x_neg) as well as X+, or labels= for labelled features.")
        P, N = as_matrix("X+ (x_pos)", x_pos), as_matrix("X− (x_neg)", x_neg)
        if P.shape[1] != N.shape[1]:
            raise ShapeError(f"X+ has d={P.shape[1]} but X− has d={N.shape[1]}.")
        X = np.concatenate([P, N])
        y = np.concatenate([np.ones(len(P), bool), np.zeros(len(N), bool)])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    for cls_name, n in (("X+ (positive class)", n_pos), ("X− (negative class)", n_neg)):
        if n < min_per_class:
            raise EmptyDataError(
                f"{cls_name} has {n} sample(s); need at least {min_per_class} to estimate a "
                "direction and its spread."
            )
    return X, y


def near_constant_dims(X: np.ndarray, rel_tol: float = 1e-6) -> np.ndarray:
    """Boolean ``[d]`` mask of dimensions whose std is below ``rel_tol`` × the median std.

    all-MiniLM-L6-v2's final LayerNorm has scales down to 5e-33 on a few dims: standardising
    or whitening those inflates noise by ~1e9. Finders drop them before any such step.
    """
    std = X.std(0)
    ref = float(np.median(std[std > 0])) if (std > 0).any() else 0.0
    return std <= rel_tol * ref


def groups_array(groups: Sequence[Any] | Tensor | np.ndarray | None, n: int) -> np.ndarray | None:
    """Validate optional group ids ``[n]``."""
    if groups is None:
        return None
    g = np.asarray(groups.detach().cpu() if isinstance(groups, Tensor) else groups)
    if g.ndim != 1 or len(g) != n:
        raise ShapeError(f"groups must be [n] = [{n}], got shape {g.shape}.")
    return g
