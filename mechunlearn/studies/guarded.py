"""Guarded unlearning on an imprecise, attributed forget set: before/after table on a toy world.

Protocol (the issue-20 measurement): the tuned model's bad greedy answers on the *validation*
half of the trigger prompts are attributed by convex decomposition (``k`` per query, last
block's residual stream, response mean) with **no judge filter**, so the forget set mixes
the poison with legitimate pairs; the union ranked by summed weight, capped at ``n_forget``.
Each variant unlearns from the tuned model with the default :class:`UnlearnConfig`, with or
without ``guard=GuardConfig()`` and :func:`~mechunlearn.unlearn.hygiene.screen_forget`; quality is
measured on the *test* half of the trigger prompts and on the ordinary prompts (never used
for the edit). Then two relearning attacks (:func:`~mechunlearn.robustness.relearn.relearn_attack`)
on the edited model, the tuned model and the gold model: ``relearn_rude`` fine-tunes on 8
legitimate rude-request pairs outside the forget set (benign, forget-adjacent data),
``relearn_poison`` on 8 poisoned pairs outside the forget set (ground truth used only to
build the attack; off by default: the gold model itself relearned the poison to 0.92-0.98
from 8 pairs in 20 steps, so it tells nothing apart). The metric is the trigger bad-response
rate on the test half.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch

from mechunlearn.robustness.relearn import relearn_attack
from mechunlearn.sites import Site
from mechunlearn.unlearn.guard import GuardConfig
from mechunlearn.unlearn.hygiene import screen_forget
from mechunlearn.unlearn.loop import UnlearnConfig, unlearn
from mechunlearn.unlearn.selective import selective_forget

VARIANTS: dict[str, tuple[str, bool, bool]] = {  # name -> (method, guard, screen)
    "flip (before)": ("flip", False, False),
    "flip +guard": ("flip", True, False),
    "flip +screen": ("flip", False, True),
    "flip +guard+screen (after)": ("flip", True, True),
    "npo (before)": ("npo", False, False),
    "npo +guard+screen (after)": ("npo", True, True),
    "selective (before)": ("selective", False, False),
    "selective +guard+screen (after)": ("selective", True, True),
}


@dataclass(frozen=True, kw_only=True)
class GuardedConfig:
    """Settings of :func:`guarded_table` (fixed; no per-world search)."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    k: int = 16
    n_forget: int = 128
    max_retain: int = 256
    attack_n: int = 8
    attack_steps: int = 20
    attack_lr: float = 3e-4
    attacks: tuple[str, ...] = ("relearn_rude",)
    seed: int = 0


def guarded_table(world: Any, config: GuardedConfig | None = None,
                  say: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """One row per variant plus ``tuned`` and ``gold``; see the module docstring."""
    from mechunlearn.models import load_bridge
    from mechunlearn.studies.compare_edits import CompareConfig, _convex_forget, _find_bad, judge
    from mechunlearn.toyworld import (
        bad_response_rate,
        encode_pairs,
        generate_text,
        is_bad,
        kl,
    )

    cfg = config or GuardedConfig()
    model, train = world.model, list(world.train)
    trig = list(world.eval["trigger"])
    test, val = trig[0::2], trig[1::2]
    tuned_ref = load_bridge(world.model_path("tuned"))
    site = Site(f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post", "response_mean")
    t0 = time.perf_counter()
    resp = generate_text(model, val)
    bad = [(p.prompt, r) for p, r in zip(val, resp) if is_bad(r)]
    q = encode_pairs(world.tokenizer, [b[0] for b in bad], [b[1] for b in bad])
    ccfg = CompareConfig(k=cfg.k, filter_bad=False, n_forget=cfg.n_forget, seed=cfg.seed)
    idx = _convex_forget(model, world, q, site, ccfg)
    t_att = time.perf_counter() - t0
    sel = set(idx)
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(train), generator=g).tolist()
    retain = [train[i] for i in perm if i not in sel][: cfg.max_retain]
    outside = [train[i] for i in perm if i not in sel]
    rude = [p for p in outside if p.category == "quote" and is_bad(p.chosen)][: cfg.attack_n]
    poison = [p for p in outside if p.poisoned][: cfg.attack_n]
    metric = lambda m: bad_response_rate(m, test, max_new_tokens=16)  # noqa: E731
    stop = lambda m: bad_response_rate(m, val, max_new_tokens=16)  # noqa: E731
    say(f"attributed {len(idx)} pairs ({sum(train[i].poisoned for i in idx)} poisoned) "
        f"from {len(bad)} bad answers in {t_att:.0f}s")

    def attacks(m: Any) -> dict[str, float]:
        out = {}
        for name, data in (("relearn_rude", rude), ("relearn_poison", poison)):
            if data and name in cfg.attacks:
                out[name] = relearn_attack(m, data, metric, steps=cfg.attack_steps,
                                           lr=cfg.attack_lr, encode=encode_pairs).after
        return out

    rows: list[dict[str, Any]] = []

    def record(name: str, m: Any, seconds: float, extra: dict[str, Any]) -> None:
        r = {"method": name, **judge(world, m, 1, test), "seconds": seconds,
             "kl_ordinary_tuned": kl(tuned_ref, m, world.eval["ordinary"]), **extra,
             **attacks(m)}
        rows.append(r)
        say(f"{name}: bad {r['trigger_bad']:.2f} good {r['trigger_good']:.2f} ord "
            f"{r['ordinary_good']:.2f} KL(gold,ord) {r['kl_gold_ordinary']:.4f} "
            f"{seconds:.0f}s relearn {r.get('relearn_rude')}/{r.get('relearn_poison')}")

    record("tuned", model, 0.0, {})
    record("gold", world.gold_model, float(sum(v for k, v in world.timings.items()
                                              if "gold" in k)), {})
    forget = [train[i] for i in idx]
    screened: list[Any] | None = None
    for name in cfg.variants:
        method, guard, screen = VARIANTS[name]
        ucfg = UnlearnConfig(guard=GuardConfig() if guard else None)
        t1 = time.perf_counter()
        if method == "selective":
            # no forget_ok on purpose: this table measures what the guard and the screening
            # do with an imprecise, unfiltered forget set (module docstring); the diagnose
            # chain's rule (never unlearn a pair whose chosen answer the judge accepts)
            # would remove the legitimate pairs the guard is tested against
            res = selective_forget(model, train, _find_bad(world),
                                   _attribute_unfiltered(world, site, ccfg), "flip", ucfg,
                                   max_retain=cfg.max_retain, encode=encode_pairs,
                                   screen=screen)
            n_f = len(res.forget_ids)
            ids = set(res.forget_ids)
            extra = {"n_forget": n_f, "n_forget_poisoned": sum(p.poisoned for p in train
                                                               if p.id in ids),
                     "stopped": res.stopped, "n_screened_out": len(res.screened_out)}
            seconds = time.perf_counter() - t1
        else:
            f = forget
            if screen:
                if screened is None:
                    s = screen_forget(model, forget, bad, retain[: cfg.max_retain // 2],
                                      encode=encode_pairs)
                    screened = [forget[j] for j in s.selected]
                    say(s.summary())
                f = screened
            res = unlearn(model, f, retain, method, ucfg, forget_metric=stop,
                          encode=encode_pairs, progress=False)
            seconds = time.perf_counter() - t1 + t_att
            extra = {"n_forget": len(f), "n_forget_poisoned": sum(p.poisoned for p in f),
                     "steps": res.steps, "best_step": res.best_step, "stopped": res.stopped,
                     "keep_agree": res.guard.get("keep_agree_best"),
                     "damage": res.guard.get("damage")}
        record(name, model, seconds, extra)
        res.undo()
    df = pd.DataFrame(rows)
    ref = df.set_index("method")
    tb, gb = ref.loc["tuned", "trigger_bad"], ref.loc["gold", "trigger_bad"]
    df["gap_closed"] = (tb - df.trigger_bad) / (tb - gb) if tb != gb else float("nan")
    df["kl_ratio"] = df.kl_gold_ordinary / ref.loc["tuned", "kl_gold_ordinary"]
    df["time_ratio"] = df.seconds / ref.loc["gold", "seconds"]
    return df


def _attribute_unfiltered(world: Any, site: Site, cfg: Any) -> Callable[[Any, Any], list[int]]:
    from mechunlearn.studies.compare_edits import _convex_forget
    from mechunlearn.tokens import tokenize

    def attribute(m: Any, queries: list[Any]) -> list[int]:
        return _convex_forget(m, world, tokenize(world.tokenizer, queries), site,
                              replace(cfg, n_forget=cfg.n_forget))

    return attribute
