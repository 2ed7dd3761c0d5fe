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

On a toy world: :mod:`mechunlearn.studies.robustness_toyworld`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from mechunlearn.robustness import Edit, robustness_table

COLUMNS = ("robustness_bad_rate", "relearn_bad_rate", "int8_bad_rate", "nf4_bad_rate",
           "ablation_project_bad_rate", "ablation_project_where", "ablation_clamp_bad_rate",
           "ablation_clamp_where", "depth", "recovered_last", "effect", "uds", "robustness_seconds")


def robustness_extra(original: Any, adjacent: Sequence[Any], judge: Callable[[str], bool], *,
                     fmt: Any = None, reference: Any = None,
                     also: Callable[..., dict[str, float]] | None = None,
                     per_layer: list[pd.DataFrame] | None = None,
                     notes: list[tuple[int, str]] | None = None,
                     max_prompts: int | None = None,
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
        notes: a list the failed checks' notes are appended to as ``(call index, sentence)``;
            given, a failing check is a NaN cell (``on_error="nan"``), not an exception.
        max_prompts: attack on the first ``max_prompts`` held-out prompts only (``None``: all;
            the chain's held-out order is already a seeded shuffle).
        table_kwargs: more arguments of :func:`~mechunlearn.robustness.robustness_table`
            (``kv_cache`` defaults to the chain's choice for the variant).

    Returns:
        ExtraMetrics adding :data:`COLUMNS` (``robustness_bad_rate``: the table's own bad rate
        of the variant before any attack, at its ``max_new_tokens``; ``robustness_seconds``
        and ``robustness_cpu_seconds``: the checks' wall and CPU time).
    """
    ref = Edit.weights(reference, reference=True) if reference is not None else None
    enc = ({"encode_prompts": fmt.encode_prompts, "encode": fmt.encode_pairs}
           if fmt is not None else {})
    calls = [0]

    def extra(model: Any, prompts: list[str], responses: list[str],
              kv_cache: bool | None) -> dict[str, Any]:
        out = dict(also(model, prompts, responses, kv_cache)) if also else {}
        t0, c0 = time.perf_counter(), time.process_time()
        kw = {"kv_cache": kv_cache, **table_kwargs}
        if notes is not None:
            kw.setdefault("on_error", "nan")
        # the variant is live on `model` right now: hooks attached or weights edited
        ps = list(prompts)[:max_prompts] if max_prompts else prompts
        df = robustness_table(original, {"edit": Edit.weights(model)}, ps, adjacent,
                              judge, reference=ref, include_unedited=False, **enc, **kw)
        row = df.iloc[0].rename({"bad_rate": "robustness_bad_rate"})
        out.update({c: row[c] for c in COLUMNS if c in row.index})
        out["robustness_seconds"] = time.perf_counter() - t0
        out["robustness_cpu_seconds"] = time.process_time() - c0
        if notes is not None:
            notes.extend((calls[0], n.removeprefix("edit: "))
                         for n in df.attrs.get("notes", []))
        if per_layer is not None:
            per_layer.append(df.attrs["per_layer"].assign(variant=calls[0]))
        calls[0] += 1
        return out

    return extra


def original_copy(model: Any, ablation_layers: Sequence[int] | None = None) -> Any:
    """A separate, unedited copy of ``model`` for the checks: a model folder is loaded a second
    time; a bridge is deep-copied (parameters and buffers in new storage, gradients dropped,
    the tokenizer shared). TransformerLens keeps non-leaf tensors on its wrappers after a
    backward pass, which ``copy.deepcopy`` refuses: those are copied detached.

    Raises:
        ConfigError: ``ablation_layers`` (``DiagnoseConfig.robustness_ablation_layers``) names
            a block the model does not have (checked before copying).
    """
    from torch import Tensor

    from mechunlearn.errors import ConfigError

    n = getattr(getattr(model, "cfg", None), "n_layers", None)
    if n is not None and any(v >= int(n) for v in ablation_layers or ()):
        raise ConfigError(f"robustness_ablation_layers {tuple(ablation_layers or ())} has "
                          f"blocks beyond the model's {n} (0..{int(n) - 1}).")
    if isinstance(model, (str, os.PathLike)):
        from mechunlearn.models import load_bridge

        return load_bridge(model)
    memo: dict[int, Any] = {id(v): v.detach().clone() for m in model.modules()
                            for v in vars(m).values()
                            if isinstance(v, Tensor) and v.grad_fn is not None}
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        memo[id(tok)] = tok
    out = copy.deepcopy(model, memo)
    for q in out.parameters():
        q.grad = None
    return out.eval() if not model.training else out


def adjacent_by_rank(train: Sequence[Any], ranked: Sequence[int], forget: Any,
                     n: int = 8) -> list[Any]:
    """Forget-adjacent samples without ground truth: the ``n`` best-ranked training rows
    (``ranked``: rows by attribution, best first, e.g. ``AttributionResult.top``) that are not
    in the forget set: what the attribution found *near* the bad behaviour but did not unlearn.
    For :func:`robustness_extra` inside :func:`~mechunlearn.studies.diagnose.diagnose`."""
    f = set(forget)
    return [train[i] for i in ranked if i not in f][:n]


class ChainChecks:
    """The robustness checks as set up by :func:`~mechunlearn.studies.diagnose.diagnose`
    (``DiagnoseConfig.robustness``): :attr:`extra` is the chain's ExtraMetrics (composed with
    the user's own through ``also=``), :meth:`finish` names the per-layer tables and notes
    after the run and takes the checks' time out of each variant's ``seconds``.

    Args:
        original: :func:`original_copy` of the tuned model, made before any edit.
        train: the training pairs; weights: attribution weight per training row (``[n]``);
            exclude: rows never used as adjacent (the forget set and its copies).
        adjacent: the user's forget-adjacent samples (pairs), or ``None``: the ``n_adjacent``
            best-weighted training rows outside ``exclude`` (:func:`adjacent_by_rank`).
        judge, fmt: the chain's; reference: the reference model (UDS) or ``None``.
        also: the user's own ExtraMetrics; relearn_steps: the relearning attack's steps;
        max_prompts: held-out prompts attacked (``None``: all); ablation_layers: blocks of
        the direction-ablation attack (``None``: all).
    """

    def __init__(self, original: Any, train: Sequence[Any], weights: Any, exclude: set[int],
                 adjacent: Sequence[Any] | None, judge: Callable[[str], bool], fmt: Any,
                 reference: Any, also: Callable[..., dict[str, float]] | None,
                 n_adjacent: int, relearn_steps: int, max_prompts: int | None = None,
                 ablation_layers: Sequence[int] | None = None) -> None:
        import torch

        from mechunlearn.errors import ConfigError

        n = int(original.cfg.n_layers)
        if ablation_layers is not None and (not ablation_layers or any(
                not 0 <= v < n for v in ablation_layers)):
            raise ConfigError(f"robustness_ablation_layers must be blocks 0..{n - 1}, got "
                              f"{ablation_layers}.")

        if adjacent is None:
            order = torch.argsort(torch.as_tensor(weights), descending=True, stable=True)
            adjacent = adjacent_by_rank(train, order.tolist(), exclude, n_adjacent)
            self.source = (f"the {len(adjacent)} training pairs with the largest attribution "
                           "weight outside the forget set (and its copies)")
        else:
            adjacent = list(adjacent)
            self.source = f"the {len(adjacent)} forget-adjacent samples given (`adjacent=`)"
        self.adjacent = adjacent
        self.per_layer: list[pd.DataFrame] = []
        self.raw_notes: list[tuple[int, str]] = []
        self.info = {"adjacent": self.source, "relearn_steps": relearn_steps,
                     "prompts": f"the first {max_prompts}" if max_prompts else "all",
                     "ablation_layers": "all" if ablation_layers is None
                     else ", ".join(map(str, ablation_layers)),
                     "uds_reference": "the reference model" if reference is not None
                     else "none (no reference model: UDS is NaN)"}
        self.extra = robustness_extra(original, adjacent, judge, fmt=fmt, reference=reference,
                                      also=also, per_layer=self.per_layer,
                                      notes=self.raw_notes, relearn_steps=relearn_steps,
                                      max_prompts=max_prompts,
                                      ablation_layers=ablation_layers)

    @classmethod
    def start(cls, original: Any, train: Sequence[Any], weights: Any, exclude: set[int],
              adjacent: Sequence[Any] | None, judge: Callable[[str], bool], fmt: Any,
              reference: Any, also: Any, cfg: Any, notes: list[str],
              say: Callable[[str], None]) -> ChainChecks | None:
        """The checks with ``cfg``'s ``robustness_*`` settings (a ``DiagnoseConfig``), or
        ``None`` with a note when there is nothing outside the forget set to relearn on."""
        c = cls(original, train, weights, exclude, adjacent, judge, fmt, reference, also,
                cfg.robustness_adjacent, cfg.robustness_relearn_steps, cfg.robustness_prompts,
                cfg.robustness_ablation_layers)
        if not c.adjacent:
            notes.append("Robustness checks not run: no training pair outside the forget set "
                         "to relearn on (pass adjacent=).")
            return None
        say(f"      robustness checks on every variant; relearning on {c.source}")
        return c

    def finish(self, rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[str]]:
        """Per-layer table (``variant`` named) and notes of the run that produced ``rows``;
        takes ``robustness_seconds`` / ``robustness_cpu_seconds`` out of the measurement's
        time in place (``measure_seconds`` / ``measure_cpu_seconds`` when the rows have them,
        else ``seconds`` / ``cpu_seconds``): the timings stay those of the chain without the
        checks."""
        names = [r["variant"] for r in rows if "robustness_seconds" in r]
        for r in rows:
            for unit in ("seconds", "cpu_seconds"):
                key = f"measure_{unit}" if f"measure_{unit}" in r else unit
                if f"robustness_{unit}" in r and key in r:
                    r[key] -= r[f"robustness_{unit}"]

        def name(i: int) -> str:
            return names[i] if i < len(names) else str(i)

        per = pd.concat(self.per_layer, ignore_index=True) if self.per_layer else pd.DataFrame()
        if len(per):
            per["variant"] = [name(int(i)) for i in per.variant]
        by_sentence: dict[str, list[str]] = {}  # one note per failure, naming its variants
        for i, n in self.raw_notes:
            vs = by_sentence.setdefault(n, [])
            if name(i) not in vs:
                vs.append(name(i))
        notes = [f"Robustness, {', '.join(vs)}: {n}" for n, vs in by_sentence.items()]
        return per, notes
