"""The report of a :class:`~mechunlearn.studies.diagnose.DiagnoseResult`: Markdown, PNG
figures and the CSV/JSON behind every table (:class:`mechunlearn.report.Report`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from mechunlearn.report import Report

METRICS = ("bad_rate_heldout", "good_rate_ordinary", "kl_ordinary")


def build_report(res: Any, title: str = "Diagnosis of a tuned model's bad responses",
                 intro: str = "", extra: Callable[[Report], None] | None = None) -> Report:
    """Assemble the report sections (bad cases, attribution, direction, edits, generations).

    ``intro``: a paragraph after the model line; ``extra``: adds more sections (e.g. the toy
    world's ground truth) after the generations, before the notes and timings.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from mechunlearn import plots

    i, c, a = res.info, res.cases, res.attribution
    rep = Report(title)
    rep.add_text(f"Model: {i['architecture']}, {i['n_layers']} layers × d={i['d_model']}. "
                 f"{i['n_train']} training samples; judge: {i['judge']}; prompt format: "
                 f"`{i['format']}`.")
    if intro:
        rep.add_text(intro)
    rep.add_text("## 1. Bad cases")
    rep.add_text(
        f"{c.n_given} bad prompts were split once (seeded): {c.n_attr_prompts} to attribute, "
        f"{len(c.heldout)} held out, used only to verify edits. Of the attribution half, "
        f"**{len(c.prompts)} responses are judged bad** (responses {c.source}); they are the "
        "queries below.")
    rep.add_table("bad_cases", pd.DataFrame({"prompt": c.prompts, "response": c.responses}),
                  "Bad cases attributed", max_rows=10)
    rep.add_text("## 2. Attribution (layer sweep, several methods)")
    truth = (f" AUC and precision@k use the {i['n_truth']} ground-truth ids given."
             if i["n_truth"] else " No ground-truth ids were given, so AUC and precision@k "
             "are not reported (NaN).")
    rep.add_text(
        "Features: `hook_resid_post` of each layer, mean over response tokens, of every "
        "training pair (prompt + chosen response) and bad case. Each method scores every "
        "training sample for each bad case; scores are averaged over all bad cases. "
        f"**Site: {a.site.key}**, chosen by {a.criterion}: mean relative residual "
        f"{_residual(a):.3f}.{truth}")
    rep.add_table("attribution_sweep", a.sweep, "Attribution by layer and method")
    metrics = ["residual"] + (["auc", "precision_at_k"] if i["n_truth"] else [])
    rep.add_figure("attribution_by_layer",
                   plots.plot_layers(a.sweep, metrics, hue="method", chance=None),
                   "Mean convex residual (and AUC / precision@k with ground truth) by layer",
                   a.sweep)
    rep.add_text(f"Top training samples by mean convex weight over the bad cases at {a.site.key} "
                 f"(weights over all samples sum to 1). The forget set is the {i['n_forget']} "
                 "of them whose chosen response the judge calls bad.")
    rep.add_table("top_samples", res.top, "Attributed training samples", ".4f")
    rep.add_text("## 3. Bias direction")
    con = res.contrast
    if con.direction is None:
        rep.add_text(f"No direction was fitted: {con.why_none}.")
    else:
        hook = res.attribution.site.hook_name
        rep.add_text(f"Contrast — {con.contrast}, at hook `{hook}` (the "
                     "Site's hook; the contrast's own token position is the one named here, "
                     "and the projection edit removes the direction at every position). "
                     "Held-out AUC and permutation p-value are "
                     "computed on held-out groups (both members of a prompt together). The "
                     "difference of means is the direction the edits remove.")
        rep.add_table("directions", con.table, "Held-out evidence per direction finder")
    rep.add_text("## 4. Edits, each measured then undone")
    rep.add_text(
        "`bad_rate_heldout`: share of held-out bad prompts whose greedy response the judge "
        "calls bad; `good_rate_ordinary`: share of ordinary prompts whose response it does not "
        "call bad; `kl_ordinary`: mean per-token KL(unedited ‖ variant) on the ordinary prompts "
        "(last prompt token and the unedited model's greedy response); `restored`: weights "
        "equal the unedited model's after undo. Rows with status `reference` are other "
        "models measured as given (not edits).")
    rep.add_table("edits", res.edits, "Every edit on the same model, Site and data")
    measured = res.edits[res.edits["status"].isin(("measured", "reference"))]
    rep.add_figure("edit_rates", _bars(measured), "Held-out bad-response rate and ordinary good rate",
                   measured[["variant", *METRICS]])
    rep.add_text("## 5. Greedy generations before and after")
    rep.add_table("generations", res.generations, "Held-out bad prompts: unedited vs each edit")
    _robustness(rep, res)
    if extra is not None:
        extra(rep)
    if res.notes:
        rep.add_text("## Notes\n\n" + "\n".join(f"- {n}" for n in res.notes))
    rep.add_table("timings", pd.DataFrame([res.timings]), "Wall time (s)", ".1f")
    rep.add_json("config", i)
    return rep


ROBUST = ("robustness_bad_rate", "relearn_bad_rate", "int8_bad_rate", "nf4_bad_rate", "ablation_project_bad_rate",
          "ablation_project_where", "ablation_clamp_bad_rate", "ablation_clamp_where", "depth",
          "recovered_last", "uds", "robustness_seconds")


def _robustness(rep: Report, res: Any) -> None:
    """The robustness section, when the edits were measured with the robustness checks
    (:func:`mechunlearn.studies.robustness.robustness_extra`; ``DiagnoseConfig.robustness``)."""
    e = res.edits
    wanted = bool(res.info.get("config", {}).get("robustness", False))
    if "relearn_bad_rate" not in e.columns:
        if wanted:
            rep.add_text("## Robustness\n\nRequested, but no edit was measured with the "
                         "robustness checks.")
        return
    cols = ["variant", "bad_rate_heldout", *[c for c in ROBUST if c in e.columns]]
    rob = res.info.get("robustness") or {}
    how = (f" Attacked prompts: {rob.get('prompts', 'all')} held-out bad prompts; ablation "
           f"at blocks: {rob.get('ablation_layers', 'all')}. Relearning "
           f"data: {rob['adjacent']}; {rob['relearn_steps']} Adam steps. UDS reference: "
           f"{rob['uds_reference']}." if rob else "")
    rep.add_text("## Robustness: does the bad behaviour come back under attack?")
    rep.add_text(
        "Every variant, with its edit in place, under four attacks "
        "(`mechunlearn.robustness`, see `docs/robustness.md`); each `*_bad_rate` is the held-out "
        "bad-response rate after the attack, read against `robustness_bad_rate` (the attacked "
        "prompts before any attack, greedy 16 tokens; `bad_rate_heldout`: all held-out "
        "prompts, decoding longer) and "
        "against a reference model that never learned the behaviour. `relearn`: fine-tuned a few "
        "steps on forget-adjacent samples (hooks of a run-time edit on); `int8`: PyTorch "
        "dynamic quantisation; `nf4`: 4-bit NormalFloat weights; `ablation_*`: the difference-"
        "of-means direction between edited and unedited activations projected out (`project`) "
        "or clamped to the unedited mean (`clamp`), strongest layer in `*_where`; `depth`: first "
        "block whose patched residual carries half the edit's effect; `effect`: that total "
        "effect, the original minus the edited model's mean log-prob of the bad responses "
        "(nats/token); `recovered_last`: share carried after the last block; `uds`: Unlearning Depth Score against the reference "
        f"(Lee, Kim and Jo, arXiv:2605.24614). NaN: the check failed (see Notes) or does not "
        f"apply (no ablation or depth for the unedited model itself).{how} The edits' `seconds` "
        "exclude the checks (`robustness_seconds`).")
    rep.add_table("robustness", e[cols], "Every edit under every attack", ".3f")
    per = getattr(res, "robustness_layers", None)
    if per is not None and len(per):
        front = [c for c in ("variant", "layer") if c in per.columns]
        rep.add_table("robustness_layers", per[front + [c for c in per.columns
                                                        if c not in front]],
                      "Per block: bad rate after ablating there, share of the edit's effect "
                      "carried when patching after it", ".3f", max_rows=60)


def _residual(a: Any) -> float:
    s = a.sweep
    return float(s[(s.method == "convex") & (s.site == a.site.key)].residual.iloc[0])


def _bars(edits: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    x = list(range(len(edits)))
    ax.bar([v - 0.2 for v in x], edits["bad_rate_heldout"], width=0.4,
           label="held-out bad-response rate")
    ax.bar([v + 0.2 for v in x], edits["good_rate_ordinary"], width=0.4,
           label="ordinary good rate")
    ax.set_xticks(x)
    ax.set_xticklabels(edits["variant"], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return fig
