"""Per-layer ablation weights: a kernel over layers.

The parametrisation of the Heretic abliteration tool (github.com/p-e-w/heretic, its
``AbliterationParameters``): the weight is ``max_weight`` at layer ``peak``, falls linearly
to ``min_weight`` at distance ``width``, and is exactly 0 (the layer is not edited) farther
away. Attention-output and MLP-down writers get a kernel each (:func:`mechunlearn.ablation.ablate_`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mechunlearn.errors import ConfigError


@dataclass(frozen=True)
class LayerKernel:
    """Ablation weight per layer.

    Attributes:
        max_weight: weight at ``peak`` (1 = full projection; >1 overshoots, <0 is refused).
        peak: layer index of the maximum (fractional allowed).
        width: distance from ``peak`` at which the weight reaches ``min_weight``; layers
            farther away get weight 0. ``math.inf`` = every layer at ``max_weight``.
        min_weight: weight at distance ``width``.
    """

    max_weight: float = 1.0
    peak: float = 0.0
    width: float = math.inf
    min_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_weight", "peak", "min_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"LayerKernel.{name} must be a finite number, got {v!r}.")
        if self.max_weight < 0 or self.min_weight < 0:
            raise ConfigError(
                f"LayerKernel weights must be >= 0, got max {self.max_weight}, min {self.min_weight}."
            )
        if not isinstance(self.width, (int, float)) or math.isnan(self.width) or self.width < 0:
            raise ConfigError(f"LayerKernel.width must be >= 0 (inf allowed), got {self.width!r}.")

    @classmethod
    def constant(cls, weight: float = 1.0) -> LayerKernel:
        """The same weight at every layer."""
        return cls(max_weight=weight, width=math.inf, min_weight=weight)

    @classmethod
    def off(cls) -> LayerKernel:
        """Weight 0 everywhere: no writer of this kind is edited."""
        return cls(max_weight=0.0, min_weight=0.0)

    def weights(self, n_layers: int) -> np.ndarray:
        """Weights ``[n_layers]`` (float64) for layers ``0 .. n_layers − 1``."""
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ConfigError(f"n_layers must be a positive int, got {n_layers!r}.")
        dist = np.abs(np.arange(n_layers, dtype=float) - self.peak)
        if math.isinf(self.width):
            return np.full(n_layers, float(self.max_weight))
        frac = np.divide(dist, self.width, out=np.zeros_like(dist), where=self.width > 0)
        w = self.max_weight + frac * (self.min_weight - self.max_weight)
        return np.where(dist <= self.width, w, 0.0)
