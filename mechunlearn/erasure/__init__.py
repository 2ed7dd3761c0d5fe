"""Erasure that holds downstream: per-layer probe reports and multi-Site edits.

``erasure_report`` says, per edit and per later layer, whether a linear or a small-MLP probe
can still read the concept on held-out data, and what the edit costs on neutral text;
``fit_sites`` / ``fit_erasure`` build edits at every Site from layer L on, iterated until the
probes fail.
"""

from mechunlearn.erasure.context import WeightEdit, edit_context, n_directions
from mechunlearn.erasure.cost import final_site, is_causal_lm, neutral_cost
from mechunlearn.erasure.fit import (
    ErasureFit,
    covariance_directions,
    fit_erasure,
    fit_sites,
    mean_difference,
)
from mechunlearn.erasure.probes import PROBES, accuracy_p_value, probe_accuracy
from mechunlearn.erasure.report import default_sites, edited_features, erasure_report, plot_erasure

__all__ = [
    "PROBES", "ErasureFit", "WeightEdit", "accuracy_p_value", "covariance_directions",
    "default_sites", "edit_context", "edited_features", "erasure_report", "final_site",
    "fit_erasure", "fit_sites", "is_causal_lm", "mean_difference", "n_directions",
    "neutral_cost", "plot_erasure", "probe_accuracy",
]
