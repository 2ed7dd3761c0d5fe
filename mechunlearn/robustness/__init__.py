"""Robustness of an edit: does the removed behaviour come back under attack?

One protocol for weight edits and run-time interventions (:class:`Edit`), four checks and the
table that puts them side by side (:func:`robustness_table`): relearning
(:func:`relearn_attack`), quantisation (:func:`quantized`), direction ablation
(:func:`ablation_attack`) and depth by activation patching with the Unlearning Depth Score
(:func:`patch_depth`). See ``docs/robustness.md``.
"""

from mechunlearn.robustness.ablation_attack import ablation_attack, edit_directions
from mechunlearn.robustness.behaviour import BadRate
from mechunlearn.robustness.depth import patch_depth
from mechunlearn.robustness.edit import Edit, check_edits
from mechunlearn.robustness.quantize import quantized
from mechunlearn.robustness.relearn import RelearnResult, relearn_attack, relearn_edit
from mechunlearn.robustness.table import robustness_table

__all__ = [
    "BadRate", "Edit", "RelearnResult", "ablation_attack", "check_edits", "edit_directions",
    "patch_depth", "quantized", "relearn_attack", "relearn_edit", "robustness_table",
]
