"""Direction finders: which direction of a Site's feature space carries the bias?

Every finder takes X+ (reinforced) and X− (discouraged) features ``[n, d]`` (tensors, arrays
or :class:`~mechunlearn.features.Features`), or ``X, labels=y``, and returns a frozen
:class:`Directions` with held-out AUC and a permutation p-value in ``scores``.
"""

from mechunlearn.directions.base import (
    Directions,
    NoEvidenceWarning,
    RankDeficientError,
    near_constant_dims,
    orthonormalize,
)
from mechunlearn.directions.ccs import ccs
from mechunlearn.directions.evidence import N_SPLITS, Evidence, auc, evaluate
from mechunlearn.directions.leace import leace
from mechunlearn.directions.mean_diff import mean_diff
from mechunlearn.directions.pca_bias import bias_ratios, pca_bias
from mechunlearn.directions.probe import probe

FINDERS = {"pca_bias": pca_bias, "mean_diff": mean_diff, "probe": probe, "ccs": ccs,
           "leace": leace}

__all__ = [
    "FINDERS", "N_SPLITS", "Directions", "Evidence", "NoEvidenceWarning", "RankDeficientError", "auc",
    "bias_ratios", "ccs", "evaluate", "leace", "mean_diff", "near_constant_dims",
    "orthonormalize", "pca_bias", "probe",
]
