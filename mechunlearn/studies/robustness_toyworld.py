"""The robustness checks on a toy world: its benign forget-adjacent pairs, and the diagnose
chain with the demo's edits, the gold model as a reference row and UDS against gold
(``scripts/robustness_table.py``). Kept apart from :mod:`mechunlearn.studies.robustness` so that
the chain (``diagnose``) and the toy-world adapter import it without a cycle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from mechunlearn.studies.robustness import robustness_extra
from mechunlearn.studies.toyworld_inputs import adjacent_pairs


def robustness_toyworld(world: Any, original: Any, methods: Sequence[str] = (
        "project", "orthogonalize", "unlearn", "u2a"), n_adjacent: int = 8,
        say: Callable[[str], None] | None = None, **table_kwargs: Any) -> Any:
    """The diagnose chain on ``world`` (the demo's edits, gold as a reference row) with the
    robustness columns per variant. ``original``: a second, separately loaded copy of
    ``world.model``. Returns the :class:`~mechunlearn.studies.diagnose.DiagnoseResult`; its
    ``info["robustness_per_layer"]`` holds the per-layer tables."""
    from mechunlearn.studies.diagnose import DiagnoseConfig, diagnose
    from mechunlearn.studies.toyworld_inputs import toyworld_inputs, toyworld_metrics
    from mechunlearn.toyworld import is_bad

    inputs = toyworld_inputs(world)
    layers: list[pd.DataFrame] = []
    extra = robustness_extra(original, adjacent_pairs(world, n_adjacent), is_bad,
                             fmt=inputs["format"], reference=world.gold_model,
                             also=toyworld_metrics(world), per_layer=layers,
                             kv_cache=True, **table_kwargs)
    # its own checks (gold as the UDS reference), not the chain's built-in ones (SFT)
    cfg = DiagnoseConfig(methods=tuple(methods), gradients=False, n_permutations=20,
                         robustness=False)
    res = diagnose(world.model, **inputs, config=cfg, extra_metrics=extra,
                   compare_with={"gold": world.gold_model}, say=say)
    names = list(res.edits[res.edits.status.isin(("measured", "reference"))].variant)
    per = pd.concat(layers, ignore_index=True) if layers else pd.DataFrame()
    if len(per):
        per["variant"] = [names[i] if i < len(names) else str(i) for i in per.variant]
    res.info["robustness_per_layer"] = per
    return res


__all__ = ["adjacent_pairs", "robustness_toyworld"]
