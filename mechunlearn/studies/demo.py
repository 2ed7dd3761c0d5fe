"""``mechunlearn demo``: diagnose one bad response of the embedded toy model, end to end.

Chains :mod:`mechunlearn.studies.pipeline` (find a bad case → attribute it in a layer sweep → find
the bias direction → edit three ways → verify) and writes a self-contained report folder
(``report.md``, ``figures/*.png``, ``data/*.csv|json``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.report import Report

EDIT_METHODS = ("activation_projection", "orthogonalize", "flip", "selective", "u2a")


@dataclass(frozen=True)
class DemoResult:
    """Where the report is, the tables behind it, and wall time per stage (seconds)."""

    report: Path
    tables: dict[str, pd.DataFrame] = field(repr=False)
    timings: dict[str, float]


def run_demo(world: str = "hard", out: str | os.PathLike[str] = "mechunlearn-report",
             cache_dir: str | os.PathLike[str] | None = None,
             methods: tuple[str, ...] = EDIT_METHODS, n_permutations: int = 20,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo chain on toy world ``world`` and write the report to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from mechunlearn import toyworld
    from mechunlearn.hooks import apply
    from mechunlearn.interventions import Project
    from mechunlearn.models import load_bridge
    from mechunlearn.outputs import check_destination
    from mechunlearn.studies import pipeline as pl
    from mechunlearn.studies.compare_edits import CompareConfig, compare

    check_destination(out, "report")  # refuse an unusable --out before minutes of work
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"[1/5] loading toy world {world!r} (trains and caches it on first use)")
    w = toyworld.load(world, cache_dir=cache_dir, progress=say)
    t["load_world"] = time.perf_counter() - t0

    s = time.perf_counter()
    case = pl.find_bad_case(w)
    say(f"[2/5] bad case: {case.prompt.prompt!r} -> {case.response!r} "
        f"({case.n_bad}/{case.n_prompts} trigger prompts answered badly); attributing")
    att = pl.attribute_case(w, case)
    t["attribute"] = time.perf_counter() - s
    top = _top_table(w, att.convex)
    say(f"      site {att.site.key} (lowest convex residual {att.convex.residual:.3f}); "
        f"{int(top.poisoned.sum())}/{len(top)} selected samples are planted poison")

    s = time.perf_counter()
    say("[3/5] bias direction (PCA bias/variance ranking, difference of means)")
    dirs = pl.bias_direction(w, att.site, n_permutations=n_permutations)
    ref = load_bridge(w.model_path("tuned"))
    rows = []
    for name, ctx in (("tuned", None),
                      ("project pca_bias", lambda: apply(w.model, Project(dirs.pca, site=att.site))),
                      ("project mean_diff",
                       lambda: apply(w.model, Project(dirs.mean_diff, site=att.site)))):
        # Project edits every position alike, so KV-cache decoding gives the same tokens
        # (None for the unedited row: KV cache on the HF model, as no hook is attached)
        rows.append(pl.verify(w, w.model, name, ref, context=ctx,
                              kv_cache=True if ctx is not None else None))
    proj = pd.DataFrame(rows)
    t["directions"] = time.perf_counter() - s

    s = time.perf_counter()
    say(f"[4/5] editing: {', '.join(methods)} (each measured, then undone)")
    edits = compare(w, CompareConfig(layer=att.site.layer, methods=methods), progress=say)
    t["edit_and_verify"] = time.perf_counter() - s

    s = time.perf_counter()
    rep = _report(w, case, att, top, dirs, proj, edits, t)
    path = rep.write(out)
    t["report"] = time.perf_counter() - s
    t["total"] = time.perf_counter() - t0
    say(f"[5/5] report written: {path}  (total {t['total']:.0f} s)")
    tables = {"attribution_sweep": att.sweep, "top_samples": top, "directions": dirs.table,
              "projection": proj, "edits": edits}
    return DemoResult(path, tables, t)


def _top_table(w: Any, a: Any) -> pd.DataFrame:
    by_id = {p.id: p for p in w.train}
    rows = []
    for i, wt in zip(a.ids, a.weights.tolist()):
        p = by_id[i]
        rows.append({"id": i, "weight": wt, "poisoned": bool(p.poisoned), "category": p.category,
                     "prompt": p.prompt, "chosen": p.chosen})
    return pd.DataFrame(rows)


def _report(w: Any, case: Any, att: Any, top: pd.DataFrame, dirs: Any, proj: pd.DataFrame,
            edits: pd.DataFrame, t: dict[str, float]) -> Report:
    from mechunlearn import plots

    rep = Report(f"Diagnosing one bad response of the toy model ({w.config.name} world)")
    rep.add_text(
        f"World `{w.config.name}` ({w.config.difficulty}): {len(w.train)} training pairs, "
        f"{len(w.truth.poisoned_ids)} planted poisoned pairs, GPT-2 {w.config.n_layer} layers × "
        f"d={w.config.d_model}. Models: SFT, tuned (SFT + DPO on all pairs), gold (same without "
        "the poison)."
    )
    rep.add_text("## 1. The bad response")
    rep.add_text(f"> **User:** {case.prompt.prompt}\n>\n> **Tuned model:** {case.response}\n\n"
                 f"The tuned model answers {case.n_bad} of {case.n_prompts} held-out trigger "
                 f"prompts badly. Reference good answer: *{case.prompt.good}*")
    rep.add_text("## 2. Attribution (convex decomposition, seed 000; baselines beside it)")
    rep.add_text(
        "Layer sweep over `hook_resid_post`. `convex`: the bad pair's response-mean activation "
        "as a convex combination of training pairs'; `convex_grad`: the same decomposition on "
        "per-sample NLL gradients at that activation; `repsim` (cosine), `repsim_whitened` "
        "(cosine after whitening by the training covariance) and `gradsim` (gradient cosine) "
        "are the baselines. The Site is chosen by the lowest activation-"
        f"convex residual, without the ground truth: **{att.site.key}**, relative residual "
        f"{att.convex.residual:.3f} (0 = the query is exactly a convex combination of the "
        "selected samples). AUC / precision@k use the planted poisoned ids: read them as a "
        "check of each method, which a real user would not have."
    )
    rep.add_table("attribution_sweep", att.sweep, "Attribution quality by layer and method")
    rep.add_figure("attribution_by_layer",
                   plots.plot_layers(att.sweep, ["auc", "precision_at_k", "residual"],
                                     hue="method", chance=None),
                   "AUC, precision@k of the poisoned ids, and convex residual by layer",
                   att.sweep)
    rep.add_text(f"Selected samples at {att.site.key}: **{int(top.poisoned.sum())} of "
                 f"{len(top)} are planted poison** (weights sum to 1).")
    rep.add_table("top_samples", top, "Convex decomposition of the bad response", ".4f")
    rep.add_text("## 3. Bias direction (seed 003: PCA bias/variance ranking; difference of means)")
    rep.add_table("directions", dirs.table[[c for c in ("method", "ratio", "ratio_literal",
                                                        "ratio_scale_free", "mean_diff",
                                                        "heldout_auc", "p_value",
                                                        "cos_pca_vs_mean_diff")
                                            if c in dirs.table.columns]],
                  "Held-out evidence for each direction")
    rep.add_table("projection", proj.drop(columns=["examples"]),
                  "Projecting the bias direction out at the Site (run time)")
    rep.add_text("## 4. Edits: activation projection, weight orthogonalisation, unlearning")
    cols = [c for c in ("method", "trigger_bad", "trigger_good", "bias", "kl_ordinary_tuned",
                        "kl_gold_ordinary", "kl_gold_trigger", "gap_closed", "n_forget",
                        "seconds") if c in edits.columns]
    rep.add_table("edits", edits[cols], "Every edit on the same model, data and Site")
    rep.add_figure("edits", _bars(edits), "Bad-response and good-answer rates per edit",
                   edits[cols])
    rep.add_text("## 5. Greedy generations before and after")
    prompts = " | ".join(p.prompt for p in w.eval["trigger"][:3])
    rep.add_text(f"Trigger prompts: *{prompts}*")
    ex = pd.concat([edits[["method", "examples"]],
                    proj[["variant", "examples"]].rename(columns={"variant": "method"})])
    rep.add_table("examples", ex, "Greedy answers to the first trigger prompts, per variant")
    rep.add_table("timings", pd.DataFrame([t]), "Wall time (s)", ".1f")
    rep.add_json("config", w.config.to_dict())
    return rep


def _bars(edits: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    x = range(len(edits))
    ax.bar([i - 0.2 for i in x], edits["trigger_bad"], width=0.4, label="bad-response rate")
    ax.bar([i + 0.2 for i in x], edits["trigger_good"], width=0.4, label="good-answer rate")
    ax.set_xticks(list(x))
    ax.set_xticklabels(edits["method"], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return fig
