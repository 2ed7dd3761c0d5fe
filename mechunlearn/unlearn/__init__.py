"""Unlearning: objectives (GA, GradDiff, NPO, SimNPO, RMU, Flip), the reversible loop with its
collateral-damage guard, forget-set screening, selective forgetting of attributed samples, U2A
weighting. The relearning attack moved to :mod:`mechunlearn.robustness.relearn` (still
importable from here for one release). The comparison harness on the toy
world moved to :mod:`mechunlearn.studies.compare_edits`. See ``docs/unlearning.md``."""

from mechunlearn.unlearn.data import Item, as_items
from mechunlearn.unlearn.guard import GuardConfig
from mechunlearn.unlearn.hygiene import ScreenResult, screen_forget
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

#: The in-place spelling (mutators end with ``_``, like ``orthogonalize_``); same function.
unlearn_ = unlearn

__all__ = [
    "NPO", "RMU", "Flip", "GradDiff", "GradientAscent", "GuardConfig", "Item", "Objective",
    "ScreenResult", "SelectiveResult", "SimNPO", "U2AResult", "UnlearnConfig",
    "UnlearnResult", "as_items", "make_objective", "screen_forget",
    "selective_forget", "snapshot", "u2a_weights", "unlearn", "unlearn_",
]


def __getattr__(name: str):  # deprecated aliases, one release
    if name in ("CompareConfig", "compare"):
        import warnings

        from mechunlearn.studies import compare_edits

        warnings.warn(f"mechunlearn.unlearn.{name} moved to mechunlearn.studies.compare_edits; "
                      "this alias goes away in the next release.", DeprecationWarning,
                      stacklevel=2)
        return getattr(compare_edits, name)
    if name in ("RelearnResult", "relearn_attack"):
        import warnings

        from mechunlearn.robustness import relearn

        warnings.warn(f"mechunlearn.unlearn.{name} moved to mechunlearn.robustness.relearn; "
                      "this alias goes away in the next release.", DeprecationWarning,
                      stacklevel=2)
        return getattr(relearn, name)
    raise AttributeError(f"module 'mechunlearn.unlearn' has no attribute {name!r}")
