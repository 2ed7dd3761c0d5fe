"""SEAL reward-model diagnostics (Revel et al., arXiv:2408.10270): alignment resistance, feature imprint and
alignment robustness, computed offline at mechunlearn Sites.

Typical use::

    pairs, report = load_hh_rlhf(path)
    train, test = split_pairs(pairs)
    rm = RewardModel.fit(bridge, train)            # head-only Bradley-Terry training
    rc, rr = rm.score_pairs(test)
    alignment_resistance(rc, rr)
"""

from mechunlearn.seal.data import (
    LoadReport,
    PreferencePair,
    load_hh_rlhf,
    load_preferences,
    load_records,
    split_dialogue,
    split_pairs,
)
from mechunlearn.seal.encode import encode_items
from mechunlearn.seal.errors import BodyMismatchError, MalformedRecordError, SiteMismatchError
from mechunlearn.seal.featurize import item_features, pair_features
from mechunlearn.seal.head import LinearHead, bradley_terry_loss, fit_head, random_head
from mechunlearn.seal.labelers import Labeler, ProbeLabeler, default_labelers, label
from mechunlearn.seal.metrics import (
    Resistance,
    alignment_resistance,
    feature_imprint,
    most_resistant,
    resistance_by_feature,
)
from mechunlearn.seal.report import SealReport, summary_markdown, write_report
from mechunlearn.seal.reward_model import RewardModel, RewardModelConfig, default_site
from mechunlearn.seal.robustness import (
    activation_robustness,
    default_perturbations,
    text_robustness,
)

__all__ = [
    "BodyMismatchError", "Labeler", "LinearHead", "LoadReport", "MalformedRecordError",
    "PreferencePair", "ProbeLabeler", "Resistance", "RewardModel", "RewardModelConfig",
    "SealReport", "SiteMismatchError", "activation_robustness", "alignment_resistance",
    "bradley_terry_loss", "default_labelers", "default_perturbations", "default_site",
    "encode_items", "feature_imprint", "fit_head", "item_features", "label", "load_hh_rlhf",
    "load_preferences", "load_records", "most_resistant", "pair_features", "random_head",
    "resistance_by_feature", "split_dialogue", "split_pairs", "summary_markdown",
    "text_robustness", "write_report",
]
