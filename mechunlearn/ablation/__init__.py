"""Abliteration-style weight edits: direction choice, per-layer kernels, norm preservation,
and a multi-objective (Pareto) search over them.

* :mod:`.directions` — mean / median / PCA of differences, PCA bias ranking, per-layer
  directions and a fractional direction index;
* :mod:`.kernel` — :class:`LayerKernel`, ablation weight per layer;
* :mod:`.edit` — :func:`ablate_`, weighted (optionally norm-preserving) ablation of the
  attention-output, MLP-down and embedding writers, with an undo handle;
* :mod:`.search` — :func:`pareto_search`, :func:`pareto_mask`, :func:`plot_front`.

The toy-world driver is :mod:`mechunlearn.studies.ablation_search`. See docs/directions.md.
"""

from mechunlearn.ablation.directions import METHODS, diff_directions, interpolate, layer_directions
from mechunlearn.ablation.edit import ablate_, edit_rows
from mechunlearn.ablation.kernel import LayerKernel
from mechunlearn.ablation.search import front, pareto_mask, pareto_search, plot_front

__all__ = [
    "METHODS", "LayerKernel", "ablate_", "diff_directions", "edit_rows", "front",
    "interpolate", "layer_directions", "pareto_mask", "pareto_search", "plot_front",
]
