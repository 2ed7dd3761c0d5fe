"""Training-data attribution: which training samples explain a (bad) response?

Methods share one interface (``Attributor.attribute(query) -> Attribution``):
:class:`ConvexAttributor` (convex decomposition, seed 000), :class:`RepSim`,
:class:`GradSim` (on :func:`gradient_features`) and :class:`RandomAttributor`.
"""

from mechunlearn.attribution.base import Attribution, Attributor, FeatureMismatchError
from mechunlearn.attribution.convex import ConvexAttributor, ConvexConfig, convex_attribution
from mechunlearn.attribution.gradient import GradSim, gradient_features
from mechunlearn.attribution.similarity import RandomAttributor, RepSim
from mechunlearn.attribution.simplex import SimplexSolution, simplex_lsq

__all__ = [
    "Attribution",
    "Attributor",
    "ConvexAttributor",
    "ConvexConfig",
    "FeatureMismatchError",
    "GradSim",
    "RandomAttributor",
    "RepSim",
    "SimplexSolution",
    "convex_attribution",
    "gradient_features",
    "simplex_lsq",
]
