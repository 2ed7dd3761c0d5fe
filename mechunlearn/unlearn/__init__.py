"""Unlearning: objectives (GA, GradDiff, NPO, SimNPO, RMU, Flip), the reversible loop,
selective forgetting of attributed samples (seed 000), U2A weighting (seed 002) and the
comparison harness. See ``docs/unlearning.md``."""

from mechunlearn.unlearn.compare import CompareConfig, compare
from mechunlearn.unlearn.data import Item, as_items
from mechunlearn.unlearn.loop import UnlearnConfig, UnlearnResult, snapshot, unlearn
from mechunlearn.unlearn.objectives import (
    NPO,
    RMU,
    Flip,
    GradDiff,
    GradientAscent,
    Objective,
    SimNPO,
    make_objective,
)
from mechunlearn.unlearn.selective import SelectiveResult, selective_forget
from mechunlearn.unlearn.u2a import U2AResult, u2a_weights

__all__ = [
    "NPO", "RMU", "CompareConfig", "Flip", "GradDiff", "GradientAscent", "Item", "Objective",
    "SelectiveResult", "SimNPO", "U2AResult", "UnlearnConfig", "UnlearnResult", "as_items",
    "compare", "make_objective", "selective_forget", "snapshot", "u2a_weights", "unlearn",
]
