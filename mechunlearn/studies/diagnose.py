"""``mu.diagnose``: the whole chain on a user's own model and data.

bad cases (given, or found by greedy decoding + a judge) -> attribution over a layer sweep
(Site chosen without ground truth) -> bias direction from a named contrast, with held-out
evidence -> edits (activation projection, weight orthogonalisation, unlearning of the
attributed samples, selective forgetting, U2A), each measured then undone -> verification on
held-out bad prompts and ordinary prompts -> a report folder
(:meth:`DiagnoseResult.write_report`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.studies.attribute import AttributionResult, attribute_sweep
from mechunlearn.studies.cases import BadCases, find_bad_cases
from mechunlearn.studies.contrast import ContrastResult, fit_direction
from mechunlearn.studies.data import (
    PathLike,
    TrainPair,
    load_bad,
    load_prompts,
    load_texts,
    load_train,
    load_truth,
)
from mechunlearn.studies.edits import METHODS, EditPlan, run_edits
from mechunlearn.studies.format import PromptFormat, make_format
from mechunlearn.studies.judge import Judge, describe, judge_all, parse_judge
from mechunlearn.studies.verify import ExtraMetrics, Verifier
from mechunlearn.tokens import model_tokenizer
from mechunlearn.unlearn.loop import UnlearnConfig


@dataclass(frozen=True, kw_only=True)
class DiagnoseConfig:
    """Settings of :func:`diagnose` (fixed defaults, no per-case search).

    ``layers``: blocks swept (default all); ``k``: convex budget per bad case; ``n_forget``:
    attributed pairs unlearned; ``max_retain``: retain sample; ``gradients``: add the
    gradient methods to the sweep; ``methods``: edits (subset of ``edits.METHODS``);
    ``heldout_fraction``: share of distinct bad prompts kept for verification only;
    ``max_ordinary``: ordinary prompts used; ``unlearn``: the unlearning loop's settings.

    ``robustness`` (default on): every measured variant (the unedited model, each edit with
    the edit in place, each ``compare_with`` model) also goes through the four robustness
    checks of :func:`mechunlearn.robustness.robustness_table` on the held-out bad prompts
    (relearning attack of ``robustness_relearn_steps`` Adam steps on
    ``robustness_adjacent`` forget-adjacent samples, int8 and 4-bit NF4 quantisation,
    direction ablation, depth by activation patching with the Unlearning Depth Score against
    ``reference``); the report gets a robustness section. Cost: a second, unedited copy of
    the model in memory and ~5 s CPU per variant on the 4-layer toy world (+53 % of the
    demo's wall time with the demo's cuts, ``docs/robustness.md``); to save time, ``robustness_prompts`` (default all) attacks only
    the first n held-out prompts and ``robustness_ablation_layers`` (default all) runs the
    ablation attack at these blocks only. A check that fails (e.g. NF4 without ``bitsandbytes``)
    is a NaN cell and a note.
    """

    layers: tuple[int, ...] | None = None
    k: int = 8
    n_forget: int = 16
    max_retain: int = 256
    gradients: bool = True
    methods: tuple[str, ...] = METHODS
    heldout_fraction: float = 0.5
    max_new_tokens: int = 32
    max_ordinary: int = 64
    n_permutations: int = 50
    n_examples: int = 4
    batch_size: int = 32
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    robustness: bool = True
    robustness_adjacent: int = 8
    robustness_relearn_steps: int = 20
    robustness_prompts: int | None = None
    robustness_ablation_layers: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from mechunlearn.studies.diagnose_checks import check_config

        check_config(self, METHODS)


@dataclass(frozen=True)
class DiagnoseResult:
    """Everything :func:`diagnose` measured; :meth:`write_report` renders it."""

    cases: BadCases
    attribution: AttributionResult
    contrast: ContrastResult
    top: pd.DataFrame
    edits: pd.DataFrame
    generations: pd.DataFrame
    notes: list[str]
    timings: dict[str, float]
    info: dict[str, Any]
    robustness_layers: pd.DataFrame | None = None
    """Per-layer robustness numbers (ablation and patching per block and variant), if run."""

    def write_report(self, out: PathLike, overwrite: bool = False) -> Any:
        """Write the report folder (``report.md``, ``figures/``, ``data/``); returns report.md."""
        from mechunlearn.studies.diagnose_report import build_report

        return build_report(self).write(out, overwrite=overwrite)


def _load_model(m: Any) -> Any:
    if isinstance(m, (str, os.PathLike)):
        from mechunlearn.models import load_bridge

        return load_bridge(m)
    return m


def diagnose(model: Any, train: PathLike | Sequence[Any], bad: PathLike | Sequence[Any], *,
             judge: Judge | str, reference: Any = None,
             ordinary: PathLike | Sequence[Any] | None = None,
             pos: PathLike | Sequence[Any] | None = None,
             neg: PathLike | Sequence[Any] | None = None,
             truth: PathLike | Sequence[str] | None = None,
             format: str | PromptFormat = "raw", config: DiagnoseConfig | None = None,
             cache: PathLike | None = None, extra_metrics: ExtraMetrics | None = None,
             compare_with: dict[str, Any] | None = None,
             adjacent: PathLike | Sequence[Any] | None = None,
             say: Callable[[str], None] | None = None) -> DiagnoseResult:
    """Diagnose a tuned model's bad responses end to end (see the module docstring).

    Args:
        model: the tuned model (TransformerBridge or a model folder).
        train: training samples (JSONL path or list): prompt/chosen/rejected or prompt/response.
        bad: bad cases: prompts (greedy answers are judged) or (prompt, response) pairs.
        judge: ``response -> bool`` (True = bad), or a CLI spec (``"w1,w2"`` / ``"re:..."``).
        reference: the reference (e.g. SFT) model: tuned-vs-reference directions, U2A's good
            answers.
        ordinary: ordinary prompts for the good-behaviour rate and KL (default: prompts of up
            to ``max_ordinary`` training pairs outside the forget set whose chosen response
            the judge does not call bad).
        pos, neg: X+ / X− samples for the direction (prompts or prompt/response pairs).
        truth: ground-truth training ids (AUC / precision@k in the sweep).
        format: ``"raw"`` (prompt + response as given), ``"chat"`` or a :class:`PromptFormat`.
        cache: folder for resumable training-feature stores (re-used on a rerun).
        extra_metrics: more columns per variant in the edits table (see
            :data:`mechunlearn.studies.verify.ExtraMetrics`), e.g. ground-truth metrics.
        compare_with: other models (name -> bridge or folder, e.g. a model retrained without
            the bad data) measured beside the edits by the same verifier (``status``
            ``"reference"``; never edited).
        adjacent: the relearning attack's forget-adjacent samples (as ``train``; default the
            ``robustness_adjacent`` best-attributed training pairs outside the forget set).
        say: progress callback (default: silent).

    Raises:
        NotCausalLMError: ``model`` cannot generate (a masked LM such as BERT), before any work.
        EmptyDataError: before any model work, a bias-direction contrast with fewer distinct
            prompts than its 5 held-out folds (e.g. ``n_forget`` < 5), or ordinary prompts
            that are empty or, without ``ordinary``, no training pair the judge accepts
            (:mod:`mechunlearn.studies.diagnose_checks`).
        ConfigError, DataFileError: bad settings, judge or data files.
    """
    from mechunlearn.studies import diagnose_checks as up_front

    cfg = config or DiagnoseConfig()
    say = say or (lambda s: None)
    up_front.check_causal(model)
    t: dict[str, float] = {}
    t0 = s0 = time.perf_counter()
    judge_fn = parse_judge(judge) if isinstance(judge, str) else judge
    if not callable(judge_fn):
        raise ConfigError(f"judge must be a callable response -> bool or a str, got {judge!r}.")
    # data the chain cannot use fails here, not after minutes of model work
    up_front.check_contrast_size(train, bad, pos, neg, reference, cfg.n_forget,
                                 cfg.heldout_fraction, cfg.seed)
    up_front.check_ordinary(train, ordinary, judge_fn)
    tr = load_train(train)
    prompts, responses = load_bad(bad)
    truth_ids = load_truth(truth, tr) if truth is not None else None
    contrast_pos = load_texts(pos) if pos is not None else None
    contrast_neg = load_texts(neg) if neg is not None else None
    ordinary_prompts = (load_prompts(ordinary, "ordinary")[: cfg.max_ordinary]
                        if ordinary is not None else None)
    try:
        adjacent_pairs = load_train(adjacent) if adjacent is not None else None
    except EmptyDataError:
        raise EmptyDataError("adjacent is empty: give a few forget-adjacent samples for the "
                             "relearning attack, or None (the best-attributed training pairs "
                             "outside the forget set).") from None
    model, reference = _load_model(model), _load_model(reference)
    up_front.check_causal(model)
    original = None
    if cfg.robustness:  # the unedited copy the checks compare with, before any backward pass
        from mechunlearn.studies.robustness import original_copy

        original = original_copy(model, cfg.robustness_ablation_layers)
    fmt = make_format(format, model_tokenizer(model))
    notes: list[str] = []

    say(f"[1/5] bad cases: judging {len(prompts)} bad prompt(s) with {describe(judge_fn)}")
    cases = find_bad_cases(model, fmt, judge_fn, prompts, responses, cfg.heldout_fraction,
                           cfg.max_new_tokens, cfg.seed)
    say(f"      {len(cases.prompts)} of {cases.n_attr_prompts} attribution-half cases judged "
        f"bad; {len(cases.heldout)} held-out prompts kept for verification")
    t["bad_cases"] = time.perf_counter() - s0

    s0 = time.perf_counter()
    say(f"[2/5] attribution over layers {list(cfg.layers) if cfg.layers else 'all'}")
    att = attribute_sweep(model, fmt, tr, cases, cfg.layers, cfg.k, cfg.gradients, truth_ids,
                          cfg.batch_size, cache, say)
    top_rows = att.top(cfg.n_forget)
    chosen_bad = judge_all(judge_fn, [tr[i].chosen for i in top_rows])
    forget = [i for i, b in zip(top_rows, chosen_bad) if b]
    if not forget:
        forget = top_rows
        notes.append("No attributed pair's chosen response is judged bad; the forget set is "
                     "the top attributed pairs unfiltered.")
    top = _top_table(tr, att, top_rows, chosen_bad, truth_ids)
    t["attribution"] = time.perf_counter() - s0

    s0 = time.perf_counter()
    say(f"[3/5] bias direction at hook {att.site.hook_name}")
    con = fit_direction(model, fmt, att.site, pos=contrast_pos, neg=contrast_neg,
                        reference=reference, prompts=list(dict.fromkeys(cases.prompts)),
                        attributed=[tr[i] for i in forget], n_permutations=cfg.n_permutations)
    say(f"      contrast {con.contrast}" + (f"; {con.why_none}" if con.direction is None else ""))
    t["directions"] = time.perf_counter() - s0

    s0 = time.perf_counter()
    sel = {(tr[i].prompt, tr[i].chosen) for i in forget}  # copies of a forgotten pair too
    g = torch.Generator().manual_seed(cfg.seed)
    retain = [i for i in torch.randperm(len(tr), generator=g).tolist()
              if (tr[i].prompt, tr[i].chosen) not in sel]
    if ordinary_prompts is None:
        ok = judge_all(judge_fn, [tr[i].chosen for i in retain])
        ordinary_prompts = list(dict.fromkeys(tr[i].prompt for i, o in zip(retain, ok) if not o))
        ordinary_prompts = ordinary_prompts[: cfg.max_ordinary]
        notes.append(f"No ordinary prompts given: {len(ordinary_prompts)} training prompts "
                     "outside the forget set whose chosen response is not judged bad are used.")
    retain = retain[: cfg.max_retain]
    say(f"[4/5] edits: {', '.join(cfg.methods)} (each measured on {len(cases.heldout)} held-out "
        f"bad and {len(ordinary_prompts)} ordinary prompts, then undone)")
    checks = None
    if original is not None:
        from mechunlearn.studies.robustness import ChainChecks

        checks = ChainChecks.start(original, tr, att.weights, {
            i for i, p in enumerate(tr) if (p.prompt, p.chosen) in sel}, adjacent_pairs,
            judge_fn, fmt, reference, extra_metrics, cfg, notes, say)
    verifier = Verifier(model, fmt, judge_fn, cases.heldout, ordinary_prompts, cfg.max_new_tokens,
                        extra=checks.extra if checks else extra_metrics)
    plan = EditPlan(fmt, judge_fn, cases, tr, att.site, con.direction, con.why_none, forget,
                    retain, reference, cfg.unlearn, cfg.max_new_tokens, cfg.k, cfg.n_forget)
    rows, gens = run_edits(model, plan, verifier, cfg.methods, say)
    for name, other in (compare_with or {}).items():
        m, gens[name] = verifier.measure(_load_model(other))
        rows.append({"variant": name, **m, "status": "reference",
                     "detail": "another model, measured as given (not an edit)"})
        say(f"      {name} (reference): bad rate {m['bad_rate_heldout']:.2f}, ordinary good "
            f"{m['good_rate_ordinary']:.2f}, KL {m['kl_ordinary']:.4f}")
    layers = None
    if checks is not None:
        layers, more = checks.finish(rows)
        notes.extend(more)
    t["edit_and_verify"] = time.perf_counter() - s0
    t["total"] = time.perf_counter() - t0
    gen = pd.DataFrame({"prompt": cases.heldout, **gens}).head(cfg.n_examples)
    info = {"judge": describe(judge_fn), "format": fmt.name, "n_train": len(tr),
            "n_truth": len(truth_ids) if truth_ids else 0, "n_forget": len(forget),
            "n_retain": len(retain), "n_ordinary": len(ordinary_prompts),
            "n_layers": int(model.cfg.n_layers), "d_model": int(model.cfg.d_model),
            "architecture": type(getattr(model, "original_model", model)).__name__,
            "config": {k: v for k, v in cfg.__dict__.items() if k != "unlearn"},
            "unlearn": cfg.unlearn.__dict__, "robustness": checks.info if checks else None}
    return DiagnoseResult(cases, att, con, top, pd.DataFrame(rows), gen, notes, t, info,
                          layers)


def _top_table(tr: list[TrainPair], att: AttributionResult, rows: list[int],
               chosen_bad: list[bool], truth: list[str] | None) -> pd.DataFrame:
    out = []
    for i, b in zip(rows, chosen_bad):
        r = {"id": tr[i].id, "weight": float(att.weights[i]), "chosen_judged_bad": b}
        if truth is not None:
            r["in_truth"] = tr[i].id in set(truth)
        out.append({**r, "prompt": tr[i].prompt, "chosen": tr[i].chosen})
    return pd.DataFrame(out)
