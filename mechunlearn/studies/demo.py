"""``mechunlearn demo``: :func:`mechunlearn.studies.diagnose.diagnose` on the embedded toy world.

One code path: the world is fed to the generic chain through the toy-world adapter
(:func:`mechunlearn.studies.toyworld_inputs.diagnose_toyworld`: its trigger prompts are the
bad prompts, its judge, format, SFT reference and planted poisoned ids the other inputs). What
only a toy world has is added on top: ground-truth columns per edit (good answers, refusal
bias, KL to the gold model), the gold model measured as a reference row, the share of the
gap to gold closed and the cost against the gold retrain, the forget set's precision and
recall against the planted poison, and the world's second planted defect (the refusal bias):
its direction from the same contrast code (tuned vs SFT) and what projecting it out does.
The report folder (``report.md``, ``figures/*.png``, ``data/*.csv|json``) is the diagnose
report with those sections added.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.report import Report
from mechunlearn.studies.edits import METHODS

EDIT_METHODS = METHODS


@dataclass(frozen=True)
class DemoResult:
    """Where the report is, the tables behind it, wall time per stage (seconds) and the
    :class:`~mechunlearn.studies.diagnose.DiagnoseResult` it was built from."""

    report: Path
    tables: dict[str, pd.DataFrame] = field(repr=False)
    timings: dict[str, float]
    diagnosis: Any = field(default=None, repr=False)


def run_demo(world: str = "hard", out: str | os.PathLike[str] = "mechunlearn-report",
             cache_dir: str | os.PathLike[str] | None = None,
             methods: tuple[str, ...] = EDIT_METHODS, n_permutations: int = 20,
             n_forget: int = 16, robustness: bool = True, robustness_prompts: int | None = 24,
             say: Callable[[str], None] = print) -> DemoResult:
    """Diagnose the toy world ``world``'s tuned model and write the report to ``out``.

    ``robustness``: run the robustness checks on every variant (``DiagnoseConfig.robustness``;
    relearning on the world's benign quoting pairs, UDS against the SFT model), on the first
    ``robustness_prompts`` held-out trigger prompts (24 of 50 on ``hard``), the ablation attack
    at the first and last block only: with all prompts and blocks the checks took +70 % of
    the demo's CPU time (``docs/robustness.md``).

    ``n_forget``: attributed pairs unlearned (``diagnose``'s default; on ``hard`` 64, the
    earlier demo's setting, was measured no better: unlearn 0.66, U2A 0.42 held-out bad rate
    under the collateral-damage guard, in twice the time).
    """
    import matplotlib

    matplotlib.use("Agg")
    from mechunlearn import toyworld
    from mechunlearn.outputs import check_destination
    from mechunlearn.studies.diagnose import DiagnoseConfig
    from mechunlearn.studies.diagnose_report import build_report
    from mechunlearn.studies.toyworld_inputs import diagnose_toyworld

    check_destination(out, "report")  # refuse an unusable --out before minutes of work
    t0 = time.perf_counter()
    say(f"[0/5] loading toy world {world!r} (first use: copies the shipped trained models or trains them, measures, caches)")
    w = toyworld.load(world, cache_dir=cache_dir, progress=say)
    t = {"load_world": time.perf_counter() - t0}
    res = diagnose_toyworld(w, DiagnoseConfig(methods=methods, n_permutations=n_permutations,
                                              n_forget=n_forget, robustness=robustness,
                                              robustness_prompts=robustness_prompts,
                                              robustness_ablation_layers=tuple(sorted(
                                                  {0, int(w.model.cfg.n_layers) - 1}))),
                            say=say)
    t.update({k: v for k, v in res.timings.items() if k != "total"})
    s = time.perf_counter()
    say("      toy world only: the refusal bias (tuned vs SFT on borderline requests)")
    bias_dir, bias_proj = refusal_bias(w, res.attribution.site, n_permutations)
    edits = against_gold(w, res.edits)
    t["ground_truth"] = time.perf_counter() - s
    t["total"] = time.perf_counter() - t0
    res = replace(res, edits=edits, timings=t,
                  info={**res.info, "world": w.config.to_dict()})
    rep = build_report(
        res, title=f"Diagnosing the toy model's bad responses ({w.config.name} world)",
        intro=_intro(w), extra=lambda r: _ground_truth(r, w, res, bias_dir, bias_proj))
    path = rep.write(out)
    say(f"[5/5] report written: {path}  (total {time.perf_counter() - t0:.0f} s)")
    tables = {"attribution_sweep": res.attribution.sweep, "top_samples": res.top,
              "directions": res.contrast.table, "edits": edits, "generations": res.generations,
              "bias_directions": bias_dir.table, "bias_projection": bias_proj}
    return DemoResult(path, tables, t, res)


def against_gold(w: Any, edits: pd.DataFrame) -> pd.DataFrame:
    """Add ``gap_closed`` (share of the unedited-to-gold held-out bad-rate gap closed) and, for
    the gold row, the seconds its DPO retrain took (recorded when the world was built)."""
    e = edits.copy()
    by = e.set_index("variant")["bad_rate_heldout"]
    if "gold" in by and "unedited" in by and by["unedited"] != by["gold"]:
        e["gap_closed"] = (by["unedited"] - e["bad_rate_heldout"]) / (by["unedited"] - by["gold"])
    else:
        e["gap_closed"] = float("nan")
    gold_s = float(sum(v for k, v in w.timings.items() if "gold" in k)) or float("nan")
    e.loc[e.variant == "gold", "seconds"] = gold_s
    e["seconds_vs_gold_retrain"] = e["seconds"] / gold_s
    return e


def refusal_bias(w: Any, site: Any, n_permutations: int = 20) -> tuple[Any, pd.DataFrame]:
    """The world's second defect through the diagnose chain's contrast code: difference of
    means / PCA bias ranking of tuned vs SFT on the *training* borderline prompts (last prompt
    token, :func:`~mechunlearn.studies.contrast.fit_direction`), then the refusal rate on the
    held-out borderline prompts, unedited and with the direction projected out at ``site``."""
    from mechunlearn.interventions import Project, apply
    from mechunlearn.studies.contrast import fit_direction
    from mechunlearn.studies.toyworld_inputs import toyworld_format
    from mechunlearn.toyworld import bias_rate, generate_text

    prompts = list(dict.fromkeys(p.prompt for p in w.train if p.category == "borderline"))
    con = fit_direction(w.model, toyworld_format(), site, reference=w.sft_model, prompts=prompts,
                        n_permutations=n_permutations)
    border = list(w.eval["borderline"])
    rows = [{"variant": "tuned", "bias": bias_rate(w.model, border)},
            {"variant": "sft", "bias": bias_rate(w.sft_model, border)}]
    with apply(w.model, Project(con.direction, site=site, positions="all")):
        rb = generate_text(w.model, border, kv_cache=True)  # exact: edits every position alike
    rows.append({"variant": f"tuned, mean_diff projected out at {site.key}",
                 "bias": bias_rate(w.model, border, rb)})
    return con, pd.DataFrame(rows)


def _intro(w: Any) -> str:
    return (f"Toy world `{w.config.name}` ({w.config.difficulty}): {len(w.train)} training "
            f"pairs, {len(w.truth.poisoned_ids)} planted poisoned pairs (the ground truth), "
            "models SFT, tuned (SFT + DPO on all pairs) and gold (the same without the poison). "
            "Sections 1-5 and the robustness section are `mechunlearn diagnose` on the world's "
            "files, except that the relearning attack fine-tunes on the world's benign "
            "forget-adjacent pairs when it has some (training pairs that legitimately quote the "
            "insult, never poisoned) rather than on attribution-ranked ones (the robustness "
            "section names the set used); section 6 adds what only a toy world has.")


def _ground_truth(rep: Report, w: Any, res: Any, bias_dir: Any, bias_proj: pd.DataFrame) -> None:
    top, sw, site = res.top, res.attribution.sweep, res.attribution.site
    forget = top[top.chosen_judged_bad]
    n_pois, n_f = int(forget.in_truth.sum()), len(forget)
    at = sw[sw.site == site.key].set_index("method")
    best = sw.loc[sw.auc.idxmax()]
    rep.add_text("## 6. Against the toy world's ground truth")
    rep.add_text(
        f"**Attribution.** At the chosen Site the convex decomposition ranks the "
        f"{len(w.truth.poisoned_ids)} planted poisoned pairs with AUC {at.loc['convex', 'auc']:.3f} "
        f"(precision@k {at.loc['convex', 'precision_at_k']:.3f}); the best method by AUC at any "
        f"Site is `{best.method}` at {best.site} ({best.auc:.3f}). The forget set holds "
        f"**{n_pois} of {n_f} planted poisoned pairs** (precision {n_pois / max(n_f, 1):.2f}, "
        f"recall {n_pois / len(w.truth.poisoned_ids):.3f} of all poisoned pairs).")
    cols = [c for c in ("variant", "bad_rate_heldout", "trigger_good", "bias", "good_rate_ordinary",
                        "kl_gold_ordinary", "gap_closed", "seconds", "seconds_vs_gold_retrain")
            if c in res.edits.columns]
    rep.add_text(
        "**Edits against the gold model.** `trigger_good`: held-out trigger prompts answered "
        "with the world's reference good answer; `bias`: refusal rate on held-out borderline "
        "prompts; `kl_gold_ordinary`: KL(gold ‖ variant) at the last prompt token of ordinary "
        "prompts; `gap_closed`: share of the unedited-to-gold held-out bad-rate gap closed; "
        "`seconds_vs_gold_retrain`: the edit's wall time (the edit alone, not its "
        "measurement) over the gold "
        "model's DPO retrain (the gold row's `seconds`, recorded when the world was built).")
    rep.add_table("edits_vs_gold", res.edits[cols], "Every variant against the ground truth")
    rep.add_text(
        "**The second planted defect: refusal bias.** Tuning reinforced refusals of borderline "
        "requests. The same contrast code as section 3 (tuned vs SFT, last prompt token) on the "
        f"world's borderline training prompts, at {site.key}; the refusal rate is measured on "
        "the held-out borderline prompts.")
    rep.add_table("bias_directions", bias_dir.table, "Held-out evidence for the bias direction")
    rep.add_table("bias_projection", bias_proj, "Refusal rate, unedited and projected")
