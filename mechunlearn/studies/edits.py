"""Edits of the tuned model, each measured by the :class:`~.verify.Verifier` and then undone.

* ``project``: :class:`~mechunlearn.interventions.Project` of the bias direction at the
  chosen Site, every token position, inside :func:`mechunlearn.apply` (nothing to undo: the
  hook is removed on exit);
* ``orthogonalize``: :func:`mechunlearn.weights.orthogonalize_` of the same direction in
  every residual writer (undone by its handle; an architecture it refuses gives a skipped
  row with the reason);
* ``unlearn``: the top attributed training pairs are the forget set, a sample of the rest
  whose chosen response the judge accepts the retain set (:func:`keep_rows`); objective
  :data:`EDIT_OBJECTIVE` (flip without its NLL term: train on the rejected response instead)
  when the data are preference triples, else ``npo``; the forget phase stops when at most
  ``UnlearnConfig.target`` (default 5 %) of the attribution-half bad prompts are still
  answered badly (:class:`~.stopping.BadAnswerTracker`: teacher-forced checks, greedy
  decoding only to confirm), then repairs;
* ``selective``: attribute -> unlearn -> re-check rounds (the selective forgetting of Liu et
  al., "Explainable reinforcement learning from human feedback to improve alignment",
  arXiv:2512.13837; :func:`mechunlearn.unlearn.selective_forget`); its first round takes the
  chain's forget set as its attribution (the sweep attributed the same bad cases with the
  same Site, ``k`` and ``n_forget``: not attributed twice) and ``unlearn``'s retain sample,
  so round 1 is the ``unlearn`` edit and later rounds re-attribute what is left;
* ``u2a``: forget weights from the first-order bi-level scores of "Unlearning to Align"
  (:func:`mechunlearn.unlearn.u2a_weights`), then
  weighted unlearning; the held-out preference pairs are the attribution-half bad cases with
  the reference model's greedy answer as the good side (needs ``reference``).

Every row records ``restored``: the model's weight fingerprint after undo equals the one
before the edit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mechunlearn.errors import ArchitectureError, MechUnlearnError
from mechunlearn.provenance import model_fingerprint
from mechunlearn.sites import Site
from mechunlearn.studies.cases import BadCases
from mechunlearn.studies.data import TrainPair
from mechunlearn.studies.format import PromptFormat
from mechunlearn.studies.judge import Judge, judge_all
from mechunlearn.studies.stopping import BadAnswerTracker
from mechunlearn.studies.verify import Verifier, generate
from mechunlearn.unlearn.objectives import Flip

METHODS = ("project", "orthogonalize", "unlearn", "selective", "u2a")


@dataclass(frozen=True)
class EditPlan:
    """Everything the edits need besides the model."""

    fmt: PromptFormat
    judge: Judge
    cases: BadCases
    train: Sequence[TrainPair]
    site: Site
    direction: Any  # Directions or None
    why_no_direction: str
    forget: list[int]  # training rows, best first
    retain: list[int]
    reference: Any = None
    unlearn_config: Any = None
    max_new_tokens: int = 32
    selective_k: int = 8
    n_forget: int = 16
    objective: Any = None  # default: EDIT_OBJECTIVE


#: The flip objective without its NLL term (pure preference contrast): with the NLL term
#: (weight 1) ordinary-prompt KL to the gold model rose to 0.26-0.43 on `hard` seed 0 vs
#: 0.17 without it at the same step (scripts/fast_unlearning.py measures it).
EDIT_OBJECTIVE = Flip(nll=0.0)


def _name(objective: Any) -> str:
    return objective if isinstance(objective, str) else objective.name


def _tracker(plan: EditPlan) -> BadAnswerTracker:
    """Stop metric on the attribution-half bad prompts: teacher-forced checks of the bad
    answers seen so far, greedy decoding only to confirm (:mod:`.stopping`)."""
    from mechunlearn.unlearn.config import UnlearnConfig

    target = (plan.unlearn_config or UnlearnConfig()).target
    return BadAnswerTracker(plan.fmt, plan.judge, plan.cases.prompts,
                            min(16, plan.max_new_tokens), target)


def keep_rows(plan: EditPlan) -> list[int]:
    """``plan.retain`` without the pairs whose chosen response the judge calls bad.

    The retain term holds the model to its unedited outputs on the retain pairs; a retain
    pair that itself teaches the bad behaviour (a poisoned pair attribution missed) holds the
    behaviour in place. Measured on the toy world `hard` seed 0 (flip, lr 1e-3, the demo's
    15 attributed pairs): held-out bad rate 0.32-0.36 after 30-50 steps with the unfiltered
    retain set (the bad answers came back), 0.00-0.02 with this filter.
    """
    ok = judge_all(plan.judge, [plan.train[i].chosen for i in plan.retain])
    return [i for i, bad in zip(plan.retain, ok) if not bad]


def _attribute(plan: EditPlan) -> Callable[[Any, Any], list[int]]:
    """Training rows by summed convex weight over the queries, with the current weights."""
    import torch

    from mechunlearn.attribution import ConvexAttributor
    from mechunlearn.features import extract
    from mechunlearn.tokens import model_tokenizer, tokenize

    tr = list(plan.train)
    tokens: dict[int, Any] = {}  # the training pairs' tokens, per tokenizer (weight-independent)

    def attribute(m: Any, queries: list[tuple[str, str]]) -> list[int]:
        tok = model_tokenizer(m)
        if id(tok) not in tokens:
            tokens[id(tok)] = plan.fmt.encode_pairs(tok, [p.prompt for p in tr],
                                                    [p.chosen for p in tr])
        ft = extract(m, tokens[id(tok)], plan.site, ids=[p.id for p in tr], progress=False)
        fq = extract(m, tokenize(tok, queries), plan.site, progress=False)
        total = torch.zeros(len(tr), dtype=torch.float64)
        for a in ConvexAttributor(ft, k=plan.selective_k).attribute_many(fq):
            total[list(a.indices)] += a.weights.double()
        order = [int(i) for i in torch.argsort(total, descending=True) if total[i] > 0]
        return order[: plan.n_forget]

    return attribute


def run_edits(model: Any, plan: EditPlan, verifier: Verifier, methods: Sequence[str] = METHODS,
              say: Callable[[str], None] = lambda s: None
              ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Measure the unedited model, then each method in ``methods`` (edit, measure, undo).

    Returns rows (``variant, bad_rate_heldout, good_rate_ordinary, kl_ordinary, seconds,
    cpu_seconds, measure_seconds, measure_cpu_seconds, restored, status, detail``) and the
    held-out greedy responses per variant. ``seconds`` (wall) and ``cpu_seconds`` (this
    process's CPU time: comparable under a varying machine load) are the edit itself: the
    call that produces the edited model, its own stop checks and decodes included; the
    verifier's held-out measurement that follows is ``measure_seconds`` /
    ``measure_cpu_seconds`` (for ``unedited``, ``seconds`` is ~0: nothing to edit).
    """
    from mechunlearn.unlearn import selective_forget, u2a_weights, unlearn

    before = model_fingerprint(model)
    rows: list[dict[str, Any]] = []
    gens: dict[str, list[str]] = {}

    def record(name: str, t0: float, ctx: Any = None, kv: bool | None = None,
               **extra: Any) -> None:
        t1, c1 = time.perf_counter(), time.process_time()  # the edit ends, measurement starts
        m, resp = verifier.measure(model, ctx, kv)
        gens[name] = resp
        rows.append({"variant": name, **m, "seconds": t1 - t0, "cpu_seconds": c1 - c0[0],
                     "measure_seconds": time.perf_counter() - t1,
                     "measure_cpu_seconds": time.process_time() - c1, "status": "measured",
                     **extra})
        say(f"      {name}: bad rate {m['bad_rate_heldout']:.2f}, ordinary good "
            f"{m['good_rate_ordinary']:.2f}, KL {m['kl_ordinary']:.4f}")

    def skip(name: str, why: str) -> None:
        rows.append({"variant": name, "status": "skipped", "detail": why})
        say(f"      {name}: skipped ({why[:100]})")

    c0 = [time.process_time()]  # CPU seconds of this process (load-independent), per edit
    record("unedited", time.perf_counter(), restored=True)
    forget = [plan.train[i] for i in plan.forget]
    keep = keep_rows(plan)
    retain = [plan.train[i] for i in keep]
    triples = all(p.rejected is not None for p in forget)
    objective = (plan.objective or EDIT_OBJECTIVE) if triples else "npo"
    for m in methods:
        t0, c0[0] = time.perf_counter(), time.process_time()
        if m in ("project", "orthogonalize") and plan.direction is None:
            skip(m, plan.why_no_direction)
            continue
        if m == "project":
            from mechunlearn.interventions import Project, apply

            iv = Project(plan.direction, site=plan.site, positions="all")
            record(m, t0, lambda iv=iv: apply(model, iv), True,
                   restored=model_fingerprint(model) == before,
                   detail=f"at {plan.site.hook_name}, every position")
            continue
        if m == "orthogonalize":
            from mechunlearn.weights import orthogonalize_

            try:
                h = orthogonalize_(model, plan.direction)
            except ArchitectureError as e:
                skip(m, str(e))
                continue
            try:
                record(m, t0, detail=f"{len(h.names)} writers")
            finally:
                h.undo()
            rows[-1]["restored"] = model_fingerprint(model) == before
            continue
        if not forget:
            skip(m, "attribution selected no training sample")
            continue
        if m == "u2a" and plan.reference is None:
            skip(m, "U2A needs good responses for its held-out pairs: pass a reference model")
            continue
        cfg = plan.unlearn_config
        if m == "unlearn":
            tr = _tracker(plan)
            res = unlearn(model, forget, retain, objective, cfg, forget_metric=tr,
                          encode=plan.fmt.encode_pairs, progress=False)
            detail = (f"{_name(objective)}, {len(forget)} forget / {len(retain)} retain, "
                      f"{res.steps} steps, stopped: {res.stopped}, {tr.n_decodes} decodes")
        elif m == "selective":
            tr = _tracker(plan)
            bad_chosen = judge_all(plan.judge, [p.chosen for p in plan.train])
            res = selective_forget(model, list(plan.train), tr.find_bad, _attribute(plan),
                                   objective, cfg, max_retain=len(retain),
                                   encode=plan.fmt.encode_pairs, forget_metric=tr,
                                   # round 1 = the unlearn variant: the chain's attribution
                                   # sweep already attributed these bad cases (same Site, k,
                                   # n_forget), and the same retain sample (judge-filtered)
                                   first_attribution=plan.forget, retain_rows=keep,
                                   # flip trains toward a forget pair's rejected answer: a
                                   # pair whose chosen answer the judge accepts is retain
                                   # data, never forget data (as the unlearn variant's set)
                                   retain_ok=lambda i, bad=bad_chosen: not bad[i],
                                   forget_ok=lambda i, bad=bad_chosen: bad[i])
            detail = (f"{_name(objective)}, {len(res.forget_ids)} forgotten, stopped: "
                      f"{res.stopped}, {tr.n_decodes} decodes")
        else:
            good = generate(plan.reference, plan.fmt, plan.cases.prompts, plan.max_new_tokens)[0]
            ok = [not b and g.strip() != "" for g, b in zip(good, judge_all(plan.judge, good))]
            held = [(p, r, g) for p, r, g, o in zip(plan.cases.prompts, plan.cases.responses,
                                                    good, ok) if o and r.strip()]
            if not held:
                skip(m, "the reference model's answers to the bad prompts are all judged bad "
                        "or empty: no good side for U2A's held-out pairs")
                continue
            try:  # e.g. no candidate improves the held-out margin: a finding, not a crash
                u = u2a_weights(model, forget, held, objective, encode=plan.fmt.encode_pairs)
            except MechUnlearnError as e:
                skip(m, f"U2A weighting: {e}")
                continue
            res = unlearn(model, forget, retain, objective, cfg, weights=u.weights,
                          forget_metric=_tracker(plan), encode=plan.fmt.encode_pairs,
                          progress=False)
            detail = (f"{_name(objective)}, {len(u.selected)} of {len(forget)} weighted > 0, "
                      f"{res.steps} steps")
        try:
            record(m, t0, detail=detail)
        finally:
            res.undo()
        rows[-1]["restored"] = model_fingerprint(model) == before
    return rows, gens
