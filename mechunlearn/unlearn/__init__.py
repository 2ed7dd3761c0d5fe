"""Unlearning: objectives (GA, GradDiff, NPO, SimNPO, RMU, Flip), the reversible loop,
selective forgetting of attributed samples (seed 000), U2A weighting (seed 002) and the
comparison harness. See ``docs/unlearning.md``."""

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

__all__ = [
    "NPO", "RMU", "Flip", "GradDiff", "GradientAscent", "Item", "Objective", "SimNPO",
    "UnlearnConfig", "UnlearnResult", "as_items", "make_objective", "snapshot", "unlearn",
]
