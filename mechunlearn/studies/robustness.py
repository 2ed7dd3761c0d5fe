"""The robustness table inside the diagnose chain, and on the toy world.

:func:`robustness_extra` turns the robustness checks
(:func:`mechunlearn.robustness.robustness_table`) into the diagnose chain's
:data:`~mechunlearn.studies.verify.ExtraMetrics`: :func:`~mechunlearn.studies.edits.run_edits`
calls it for every variant *while the edit is in place* (a projection's hooks attached, an
orthogonalised or unlearned model's weights changed), so every edit the chain builds gets its
row without building it twice. The unedited model is compared with a separately loaded copy of
itself (the ``original``), which the checks need unedited. Reference models (``compare_with``,
e.g. a model retrained without the bad data) get the same checks, and with ``reference`` the
Unlearning Depth Score is computed against it.

:func:`robustness_toyworld` runs it on a toy world with the demo's edits and the gold model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from mechunlearn.robustness import Edit, robustness_table

COLUMNS = ("relearn_bad_rate", "int8_bad_rate", "nf4_bad_rate", "ablation_project_bad_rate",
           "ablation_project_where", "ablation_clamp_bad_rate", "ablation_clamp_where",
           "depth", "recovered_last", "effect", "uds", "robustness_seconds")


def robustness_extra(original: Any, adjacent: Sequence[Any], judge: Callable[[str], bool], *,
                     fmt: Any = None, reference: Any = None,
                     also: Callable[..., dict[str, float]] | None = None,
                     per_layer: list[pd.DataFrame] | None = None,
                     **table_kwargs: Any) -> Callable[..., dict[str, Any]]:
    """ExtraMetrics running the robustness checks on each variant.

    Args:
        original: a separately loaded copy of the unedited model (never edited).
        adjacent: the relearning attack's forget-adjacent samples.
        judge: ``response -> bool`` (True = bad); fmt: the chain's
            :class:`~mechunlearn.studies.format.PromptFormat` (prompt and pair encoders).
        reference: a model that never learned the behaviour (enables UDS), or ``None``.
        also: other ExtraMetrics whose columns are added first (e.g. the toy world's).
        per_layer: a list the per-layer tables are appended to (``variant`` = call index).
        table_kwargs: more arguments of :func:`~mechunlearn.robustness.robustness_table`.
    """
    ref = Edit.weights(reference, reference=True) if reference is not None else None
    enc = ({"encode_prompts": fmt.encode_prompts, "encode": fmt.encode_pairs}
           if fmt is not None else {})
    calls = [0]

    def extra(model: Any, prompts: list[str], responses: list[str],
              kv_cache: bool | None) -> dict[str, Any]:
        out = dict(also(model, prompts, responses, kv_cache)) if also else {}
        t0 = time.perf_counter()
        # the variant is live on `model` right now: hooks attached or weights edited
        df = robustness_table(original, {"edit": Edit.weights(model)}, prompts, adjacent,
                              judge, reference=ref, include_unedited=False, **enc,
                              **table_kwargs)
        row = df.iloc[0]
        out.update({c: row[c] for c in COLUMNS if c in row.index})
        out["robustness_seconds"] = time.perf_counter() - t0
        if per_layer is not None:
            per_layer.append(df.attrs["per_layer"].assign(variant=calls[0]))
        calls[0] += 1
        return out

    return extra


def adjacent_pairs(world: Any, n: int = 8) -> list[Any]:
    """The toy world's forget-adjacent samples: training pairs that legitimately quote the
    bad text (category ``quote``, chosen judged bad), never poisoned: benign relearning data
    (as in :mod:`mechunlearn.studies.guarded`)."""
    from mechunlearn.toyworld import is_bad

    return [p for p in world.train if p.category == "quote" and is_bad(p.chosen)
            and not p.poisoned][:n]


def adjacent_by_rank(train: Sequence[Any], ranked: Sequence[int], forget: Sequence[int],
                     n: int = 8) -> list[Any]:
    """Forget-adjacent samples without ground truth: the ``n`` best-ranked training rows
    (``ranked``: rows by attribution, best first, e.g. ``AttributionResult.top``) that are not
    in the forget set: what the attribution found *near* the bad behaviour but did not unlearn.
    For :func:`robustness_extra` inside :func:`~mechunlearn.studies.diagnose.diagnose`."""
    f = set(forget)
    return [train[i] for i in ranked if i not in f][:n]


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
    cfg = DiagnoseConfig(methods=tuple(methods), gradients=False, n_permutations=20)
    res = diagnose(world.model, **inputs, config=cfg, extra_metrics=extra,
                   compare_with={"gold": world.gold_model}, say=say)
    names = list(res.edits[res.edits.status.isin(("measured", "reference"))].variant)
    per = pd.concat(layers, ignore_index=True) if layers else pd.DataFrame()
    if len(per):
        per["variant"] = [names[i] if i < len(names) else str(i) for i in per.variant]
    res.info["robustness_per_layer"] = per
    return res
