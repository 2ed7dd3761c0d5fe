"""Training-data attribution: which training samples explain a (bad) response?

Methods share one interface (``Attributor.attribute(query) -> Attribution``):
:class:`ConvexAttributor` (convex decomposition, Liu et al., arXiv:2512.13837), :class:`RepSim`,
:class:`GradSim` (on :func:`gradient_features`), :class:`RandomAttributor`, and
:class:`ContrastAttributor` (preference-contrast features, :func:`contrast_features`).
:func:`explain_preferences` is the one-call version for your own model and preference data;
``Attributor.attribute_set`` attributes a set of bad responses at once;
:func:`choose_by_stability` picks a Site without ground truth.
:data:`METHODS` names every method with one interface (``make(name, train, k=k)``),
including EK-FAC influence (:class:`EKFACAttributor`) when ``kronfluence`` is installed.
"""

from mechunlearn.attribution.base import (
    Attribution,
    Attributor,
    FeatureMismatchError,
    SetAttribution,
)
from mechunlearn.attribution.contrast import (
    ContrastAttributor,
    ContrastFeatures,
    contrast_features,
    reference_answers,
)
from mechunlearn.attribution.convex import ConvexAttributor, ConvexConfig, convex_attribution
from mechunlearn.attribution.ensemble import ZMeanAttributor
from mechunlearn.attribution.explain import explain_preferences
from mechunlearn.attribution.gradient import GradSim, gradient_features
from mechunlearn.attribution.influence import EKFACAttributor, kronfluence_available
from mechunlearn.attribution.registry import METHODS, Method, make, methods
from mechunlearn.attribution.selection import choose_by_stability, split_half_stability
from mechunlearn.attribution.similarity import RandomAttributor, RepSim
from mechunlearn.attribution.simplex import SimplexSolution, simplex_lsq

__all__ = [
    "METHODS",
    "Attribution",
    "Attributor",
    "ContrastAttributor",
    "ContrastFeatures",
    "EKFACAttributor",
    "ConvexAttributor",
    "ConvexConfig",
    "FeatureMismatchError",
    "GradSim",
    "Method",
    "RandomAttributor",
    "RepSim",
    "SetAttribution",
    "SimplexSolution",
    "ZMeanAttributor",
    "choose_by_stability",
    "contrast_features",
    "convex_attribution",
    "explain_preferences",
    "gradient_features",
    "kronfluence_available",
    "make",
    "methods",
    "reference_answers",
    "simplex_lsq",
    "split_half_stability",
]
