"""Options of the convex decomposition (:class:`ConvexConfig`), validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mechunlearn.errors import ConfigError

Normalize = Literal["none", "l2", "standardize"]
PoolMetric = Literal["euclidean", "cosine"]


@dataclass(frozen=True, kw_only=True)
class ConvexConfig:
    """Options of :class:`ConvexAttributor`.

    Attributes:
        k: maximum number of selected samples (budget).
        pool: size of the nearest-neighbour candidate pool (at least ``k``; capped at N).
        tol: stop when the relative residual is ``<= tol``.
        center: subtract the training mean from all features first.
        normalize: ``"none"``, ``"l2"`` (unit rows, after centering) or ``"standardize"``
            (divide each dimension by its training std, floored at ``std_floor`` times the median
            std so near-constant dimensions are not blown up).
        pool_metric: how the pool is chosen and how unselected samples are scored.
        rule: greedy rule, ``"line"`` (largest residual reduction along the line) or
            ``"correlation"`` (Frank-Wolfe: most correlated with the residual).
        std_floor: see ``normalize="standardize"``.
        refresh: pricing rounds: when the greedy stops inside the pool with budget left and
            residual above ``tol``, one pass over the whole training set adds the
            ``refresh_size`` samples with the most negative multiplier (those that would
            lower the residual) to the pool, then the greedy resumes (column generation).
            If none exists, the solution is optimal over the whole training set.
        locality: ``mu >= 0``: minimise ``||q - sum w_i x_i||^2 + mu sum w_i ||q - x_i||^2``
            instead, preferring tight sets of samples close to the query (the seed's "closest
            samples such that q is a convex combination"); 0 = plain residual.
        min_weight: selected samples whose weight is below ``min_weight`` times the largest
            weight are dropped at the end (weights renormalised; residual recomputed).
        block: queries served by one pass over the training set in
            :meth:`ConvexAttributor.attribute_many` (memory: ``8 * block * N`` bytes).
    """

    k: int = 32
    pool: int = 256
    tol: float = 1e-4
    center: bool = True
    normalize: Normalize = "none"
    pool_metric: PoolMetric = "euclidean"
    rule: Literal["line", "correlation"] = "line"
    std_floor: float = 1e-3
    refresh: int = 2
    min_weight: float = 1e-6
    locality: float = 0.0
    refresh_size: int = 128
    block: int = 64

    def __post_init__(self) -> None:
        if not (float(self.locality) >= 0.0):
            raise ConfigError(f"ConvexConfig.locality must be >= 0, got {self.locality!r}.")
        if isinstance(self.refresh, bool) or not isinstance(self.refresh, int) or self.refresh < 0:
            raise ConfigError(f"ConvexConfig.refresh must be an int >= 0, got {self.refresh!r}.")
        for name in ("k", "pool", "refresh_size", "block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"ConvexConfig.{name} must be a positive int, got {v!r}.")
        if not (0.0 <= float(self.tol) < 1.0):
            raise ConfigError(f"ConvexConfig.tol must be in [0, 1), got {self.tol!r}.")
        if self.normalize not in ("none", "l2", "standardize"):
            raise ConfigError(
                f"ConvexConfig.normalize must be 'none', 'l2' or 'standardize', "
                f"got {self.normalize!r}."
            )
        if self.pool_metric not in ("euclidean", "cosine"):
            raise ConfigError(
                f"ConvexConfig.pool_metric must be 'euclidean' or 'cosine', "
                f"got {self.pool_metric!r}."
            )
        if self.rule not in ("line", "correlation"):
            raise ConfigError(f"ConvexConfig.rule must be 'line' or 'correlation', got {self.rule!r}.")
