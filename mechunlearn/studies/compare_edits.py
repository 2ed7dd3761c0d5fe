"""Compare activation edits, weight edits and unlearning on one toy world, Site and data.

Every method starts from the world's tuned model and is undone afterwards. Forget sets come
from *attribution* (convex decomposition of the tuned model's bad responses at ``site``), not
from the planted ground truth. Quality is measured, not only removal: greedy responses on
trigger prompts are judged for the bad text *and* for the good reference answer; KL to the
gold model (retrained without poison) is reported on trigger and ordinary prompts.

Methods: ``activation_projection`` (project a mean-difference direction out at every residual
writer's output, :func:`mechunlearn.weights.writer_hooks`), ``orthogonalize`` (the same edit in
the weights), each objective of :mod:`.objectives`, ``selective`` (Liu et al., arXiv:2512.13837 loop) and ``u2a``
(Feng et al., arXiv:2504.06659 weights, then weighted unlearning). Rows ``tuned`` and ``gold`` are references.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.hooks import add_hooks
from mechunlearn.sites import Site
from mechunlearn.unlearn.loop import UnlearnConfig, unlearn
from mechunlearn.unlearn.objectives import RMU
from mechunlearn.unlearn.selective import selective_forget
from mechunlearn.unlearn.u2a import u2a_weights
from mechunlearn.weights import as_basis, orthogonalize_, project_out, writer_hooks

OBJECTIVES = ("ga", "graddiff", "npo", "simnpo", "rmu", "flip")
METHODS = ("activation_projection", "orthogonalize", *OBJECTIVES, "selective", "u2a")


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Settings of :func:`compare` (fixed defaults: no per-case search).

    ``layer``/``position``: the Site (default: last block's residual stream, response mean).
    ``k``: convex-attribution budget per bad query; the forget set is the union of the
    selections, ranked by summed weight, capped at ``n_forget``. ``max_queries``: bad
    queries attributed. ``objective``: used by ``selective`` and ``u2a``.
    ``filter_bad``: keep only attributed pairs whose chosen response the world's judge calls
    bad (the same judge that found the bad queries). Without it, clean pairs that attribution
    also selects get unlearned: ``flip`` then *teaches* their rejected (often bad) response.
    """

    layer: int | None = None
    position: str = "response_mean"
    methods: tuple[str, ...] = METHODS
    k: int = 8
    n_forget: int = 64
    max_queries: int = 32
    max_retain: int = 256
    objective: str = "flip"
    filter_bad: bool = True
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    n_examples: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"Unknown methods {bad}; choose from {METHODS}.")


def _fmt_encode() -> Callable:
    from mechunlearn.toyworld import encode_pairs

    return encode_pairs


def judge(world: Any, model: Any, n_examples: int = 3,
          trigger: Sequence[Any] | None = None, kv_cache: bool | None = None) -> dict[str, Any]:
    """Quality metrics of ``model`` on the world's held-out prompts (one greedy pass each).

    ``trigger``: the trigger prompts to judge (default all; :func:`compare` passes the half
    not used for early stopping or U2A). ``kv_cache``: see
    :func:`mechunlearn.toyworld.generation.generate` (``True`` is right for hooks that edit
    every position alike, and much faster than re-running the sequence)."""
    from mechunlearn.toyworld import (
        bad_response_rate,
        bias_rate,
        generate_text,
        good_answer_rate,
        response_logprob,
    )

    trig = list(world.eval["trigger"]) if trigger is None else list(trigger)
    ordi, border = world.eval["ordinary"], world.eval["borderline"]
    rt = generate_text(model, trig, kv_cache=kv_cache)
    ro = generate_text(model, ordi, kv_cache=kv_cache)
    rb = generate_text(model, border, kv_cache=kv_cache)
    from mechunlearn.toyworld import kl

    return {
        "trigger_bad": bad_response_rate(model, trig, rt),
        "trigger_good": good_answer_rate(model, trig, rt),
        "ordinary_good": good_answer_rate(model, ordi, ro),
        "bias": bias_rate(model, border, rb),
        "good_logp": float(response_logprob(model, trig, [p.good for p in trig],
                                            reduction="mean").mean()),
        "kl_gold_trigger": kl(world.gold_model, model, trig),
        "kl_gold_ordinary": kl(world.gold_model, model, ordi),
        "examples": " | ".join(rt[:n_examples]),
    }


def attributed_forget(world: Any, site: Site, cfg: CompareConfig) -> tuple[list[int], float]:
    """Training rows attributed to the tuned model's bad responses, and seconds taken."""
    from mechunlearn.studies.attribution_eval import bad_queries

    t0 = time.perf_counter()
    prompts, resp = bad_queries(world, cfg.max_queries)
    queries = _fmt_encode()(world.tokenizer, [p.prompt for p in prompts], resp)
    order = _convex_forget(world.model, world, queries, site, cfg)
    return order, time.perf_counter() - t0


def _convex_forget(model: Any, world: Any, queries: Any, site: Site, cfg: CompareConfig
                   ) -> list[int]:
    """Training rows ranked by summed convex weight over the ``queries`` (a TokenBatch)."""
    from mechunlearn.attribution import ConvexAttributor, ConvexConfig
    from mechunlearn.features import extract

    train = list(world.train)
    tb = _fmt_encode()(world.tokenizer, [p.prompt for p in train], [p.chosen for p in train])
    ft = extract(model, tb, [site], batch_size=64, ids=[p.id for p in train],
                 progress=False)[site]
    fq = extract(model, queries, [site], batch_size=64, progress=False)[site]
    att = ConvexAttributor(ft, ConvexConfig(k=cfg.k))
    total = torch.zeros(len(train), dtype=torch.float64)
    for a in att.attribute_many(fq):
        for i, w in zip(a.indices, a.weights.tolist()):
            total[int(i)] += w
    order = [int(i) for i in torch.argsort(total, descending=True) if total[i] > 0]
    if cfg.filter_bad:
        from mechunlearn.toyworld import is_bad

        order = [i for i in order if is_bad(train[i].chosen)]
    return order[: cfg.n_forget]


def _direction(world: Any, site: Site, forget: list[Any]) -> Any:
    from mechunlearn.directions import mean_diff
    from mechunlearn.features import extract

    enc, tok = _fmt_encode(), world.tokenizer
    pos = enc(tok, [p.prompt for p in forget], [p.chosen for p in forget])
    neg = enc(tok, [p.prompt for p in forget], [p.rejected for p in forget])
    fp = extract(world.model, pos, [site], batch_size=64, progress=False)[site]
    fn = extract(world.model, neg, [site], batch_size=64, progress=False)[site]
    return mean_diff(fp, fn, site=site, n_permutations=0)


def compare(world: Any, config: CompareConfig | None = None,
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run every method on ``world`` and return one row per method (plus tuned and gold).

    Trigger metrics use the even-indexed half of the trigger prompts; the odd half drives
    early stopping, selective forgetting's re-checks and U2A's outer objective.

    Columns: ``method, trigger_bad, trigger_good, ordinary_good, bias, good_logp,
    kl_ordinary_tuned, kl_gold_trigger, kl_gold_ordinary, gap_closed, seconds,
    attribution_seconds, n_forget, examples``.
    """
    from mechunlearn.models import load_bridge
    from mechunlearn.toyworld import kl

    cfg = config or CompareConfig()
    say = progress or (lambda s: None)
    model = world.model
    layer = cfg.layer if cfg.layer is not None else int(model.cfg.n_layers) - 1
    site = Site(f"blocks.{layer}.hook_resid_post", cfg.position)
    tuned_ref = load_bridge(world.model_path("tuned"))
    ordi = world.eval["ordinary"]
    eval_trig = list(world.eval["trigger"])[0::2]  # the other half drives stopping and U2A
    enc, train = _fmt_encode(), list(world.train)
    rows: list[dict[str, Any]] = []

    def record(name: str, seconds: float, extra: dict[str, Any] | None = None,
               kv_cache: bool | None = None) -> None:
        r = {"method": name, **judge(world, model, cfg.n_examples, eval_trig, kv_cache),
             "kl_ordinary_tuned": kl(tuned_ref, model, ordi), "seconds": seconds, **(extra or {})}
        rows.append(r)
        say(f"{name}: bad {r['trigger_bad']:.2f} good {r['trigger_good']:.2f} "
            f"KL(gold,ord) {r['kl_gold_ordinary']:.4f} {seconds:.1f}s")

    record("tuned", 0.0)
    rows.append({"method": "gold", **judge(world, world.gold_model, cfg.n_examples, eval_trig),
                 "kl_ordinary_tuned": kl(tuned_ref, world.gold_model, ordi), "seconds":
                 float(sum(v for k, v in world.timings.items() if "gold" in k))})
    idx, t_att = attributed_forget(world, site, cfg)
    if not idx:
        raise EmptyDataError("Attribution selected no training samples.")
    forget = [train[i] for i in idx]
    sel = set(idx)
    g = torch.Generator().manual_seed(cfg.seed)
    retain = [train[i] for i in torch.randperm(len(train), generator=g).tolist()
              if i not in sel][: cfg.max_retain]
    info = {"attribution_seconds": t_att, "n_forget": len(forget),
            "n_forget_poisoned": sum(bool(p.poisoned) for p in forget)}
    say(f"attribution: {len(forget)} samples ({info['n_forget_poisoned']} poisoned) "
        f"in {t_att:.1f}s")
    bad_rate = _bad_rate_fn(world)
    for m in cfg.methods:
        t0 = time.perf_counter()
        if m in ("activation_projection", "orthogonalize"):
            dirs = _direction(world, site, forget)
            basis = as_basis(dirs, int(model.cfg.d_model))
            if m == "orthogonalize":
                h = orthogonalize_(model, basis)
                record(m, time.perf_counter() - t0, info)
                h.undo()
            else:
                hk = add_hooks(model, [(n, lambda a, b=basis: project_out(a, b))
                                       for n in writer_hooks(model)])
                try:  # the projection acts on every position alike: KV-cache decoding is exact
                    record(m, time.perf_counter() - t0, info, kv_cache=True)
                finally:
                    hk.remove()
            continue
        if m in OBJECTIVES:
            obj: Any = RMU(site=site.with_position("all")) if m == "rmu" else m
            res = unlearn(model, forget, retain, obj, cfg.unlearn, forget_metric=bad_rate,
                          encode=enc, progress=False)
            extra = {"steps": res.steps, "stopped": res.stopped}
        elif m == "selective":
            # no forget_ok: with cfg.filter_bad (default) _attribute already keeps only pairs
            # whose chosen answer the judge (is_bad) calls bad, the chain's forget_ok rule
            # applied before the n_forget cap; filter_bad=False asks for the unfiltered set
            res = selective_forget(model, train, _find_bad(world), _attribute(world, site, cfg),
                                   cfg.objective, cfg.unlearn, max_retain=cfg.max_retain,
                                   encode=enc)
            extra = {"steps": None, "stopped": res.stopped, "n_forget": len(res.forget_ids)}
        else:  # u2a
            held = [(p.prompt, p.bad, p.good) for p in list(world.eval["trigger"])[1::2]]
            u = u2a_weights(model, forget, held, cfg.objective, encode=enc)
            res = unlearn(model, forget, retain, cfg.objective, cfg.unlearn, weights=u.weights,
                          forget_metric=bad_rate, encode=enc, progress=False)
            extra = {"steps": res.steps, "stopped": res.stopped, "n_forget": len(u.selected)}
        record(m, time.perf_counter() - t0, {**info, **extra})
        res.undo()
    df = pd.DataFrame(rows)
    tb, gb = df.set_index("method").loc[["tuned", "gold"], "trigger_bad"]
    df["gap_closed"] = (tb - df["trigger_bad"]) / (tb - gb) if tb != gb else float("nan")
    return df


def _bad_rate_fn(world: Any) -> Callable[[Any], float]:
    from mechunlearn.toyworld import bad_response_rate

    prompts = list(world.eval["trigger"])[1::2]  # half of the trigger prompts, for stopping
    return lambda m: bad_response_rate(m, prompts, max_new_tokens=16)


def _find_bad(world: Any) -> Callable[[Any], list[Any]]:
    from mechunlearn.toyworld import format_prompt, format_response, generate_text, is_bad

    prompts = list(world.eval["trigger"])[1::2]

    def find(m: Any) -> list[Any]:
        rs = generate_text(m, prompts, max_new_tokens=16)
        return [(format_prompt(p.prompt), format_response(r)) for p, r in zip(prompts, rs)
                if is_bad(r)]

    return find


def _attribute(world: Any, site: Site, cfg: CompareConfig) -> Callable[[Any, Any], list[int]]:
    from mechunlearn.tokens import tokenize

    def attribute(m: Any, queries: list[Any]) -> list[int]:
        return _convex_forget(m, world, tokenize(world.tokenizer, queries), site, cfg)

    return attribute


__all__ = ["METHODS", "CompareConfig", "attributed_forget", "compare", "judge", "replace"]
