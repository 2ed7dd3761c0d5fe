"""Trade-off curves of the edits on the ``hard`` toy world (issue 20): bad-response gap closed
on held-out trigger prompts against KL(gold || model) on ordinary prompts (x the tuned
model's), per method, traced along each method's own knob.

    python scripts/tradeoff_curves.py --seed 0 --out docs     # one world seed per run (~10 min)
    python scripts/tradeoff_curves.py --seed 1 --out docs
    python scripts/tradeoff_curves.py --plot --out docs        # the figure from the CSVs

Per seed: load the cached ``hard`` world, run the diagnose chain's bad cases -> attribution
-> contrast steps once (``diagnose_toyworld`` with no edit), and take its forget set (the top
16 attributed pairs whose chosen answer the judge calls bad: no ground truth), its retain
sample (the chain's, judge-filtered by ``studies.edits.keep_rows``), Site and direction. Then:

* unlearning (``flip`` = the chain's ``Flip(nll=0)``, ``npo``, ``graddiff``, ``simnpo``, and
  U2A-weighted flip): ``UnlearnConfig`` defaults but no early stop (all 60 forget + 15 repair
  steps), measured every ``--eval-every`` steps through ``unlearn(metrics=...)``; the column
  ``attr_half_bad`` is the chain's stop metric (bad rate on the attribution half), so the
  step where the default loop stops is the first point where it is 0;
* activation projection at the chain's Site, every position: strength α in {0, .25, .5, .75,
  1} (``Project(strength=α)``) for k = 1, 2, 4 directions (the chain's difference of means,
  then the tuned-vs-SFT PCA bias components, Gram-Schmidt);
* weight orthogonalisation (``orthogonalize_``) of k = 1, 2, 4, 8 directions in every residual
  writer, and of the k = 1 direction in one writer kind only.

Every point is measured by the chain's ``Verifier`` (greedy decoding with the self-checked KV
cache, 50 held-out trigger prompts never used for the edit, 64 ordinary prompts) plus the toy
world's ``good_answer_rate`` and ``kl`` (KL to gold at the last prompt token of the ordinary
prompts, as ``studies.toyworld_inputs.toyworld_metrics``). Gap closed = (bad_unedited -
bad)/(bad_unedited - bad_gold). Writes ``<out>/unlearning_tradeoff_hard_s<seed>.csv``;
``--plot`` writes ``<out>/unlearning_tradeoff_hard.png`` (one panel per seed).
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import torch

OBJECTIVES = ("flip", "npo", "graddiff", "simnpo", "u2a")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROJECT_K = (1, 2, 4)
ORTHO_K = (1, 2, 4, 8)
ORTHO_KINDS = (("attn",), ("mlp",), ("embed", "pos_embed"))


def directions(w, res, k_max: int) -> torch.Tensor:
    """``[k_max, d]`` orthonormal: the chain's difference of means first, then the tuned-vs-SFT
    PCA bias components (same contrast, Site and token) with the earlier ones removed."""
    from mechunlearn.directions import pca_bias
    from mechunlearn.features import extract
    from mechunlearn.studies.toyworld_inputs import toyworld_format
    from mechunlearn.tokens import model_tokenizer

    prompts = list(dict.fromkeys(res.cases.prompts))
    tb = toyworld_format().encode_prompts(model_tokenizer(w.model), prompts)
    s = res.attribution.site.with_position("last")
    fp, fn = extract(w.model, tb, s), extract(w.sft_model, tb, s)
    pca = pca_bias(fp, fn, k=2 * k_max, site=s, n_permutations=0)
    rows = [res.contrast.direction.basis[0].double()]
    for v in pca.basis.double():
        for u in rows:
            v = v - (v @ u) * u
        if float(v.norm()) > 0.3:  # keep components not (nearly) spanned by the earlier ones
            rows.append(v / v.norm())
        if len(rows) == k_max:
            break
    return torch.stack(rows).float()


def run(seed: int, out: str, objectives: tuple[str, ...], eval_every: int,
        world: str = "hard") -> None:
    import pandas as pd

    from mechunlearn import toyworld
    from mechunlearn.atomic import atomic_write
    from mechunlearn.interventions import Project, apply
    from mechunlearn.studies.diagnose import DiagnoseConfig
    from mechunlearn.studies.edits import EDIT_OBJECTIVE, EditPlan, keep_rows
    from mechunlearn.studies.stopping import BadAnswerTracker
    from mechunlearn.studies.toyworld_inputs import (
        diagnose_toyworld,
        toyworld_format,
        toyworld_inputs,
    )
    from mechunlearn.studies.verify import Verifier, generate
    from mechunlearn.toyworld import good_answer_rate, is_bad, kl
    from mechunlearn.unlearn import UnlearnConfig, u2a_weights, unlearn
    from mechunlearn.weights import orthogonalize_

    t_start = time.perf_counter()
    wc = toyworld.PRESETS[world].replace(seed=seed) if seed else toyworld.PRESETS[world]
    w = toyworld.load(wc, progress=False)
    say = lambda s: print(f"[s{seed} {time.perf_counter() - t_start:5.0f}s] {s}", flush=True)  # noqa: E731
    cfg = DiagnoseConfig(methods=())
    res = diagnose_toyworld(w, cfg, say=say, ground_truth=False)
    fmt, tr = toyworld_format(), toyworld_inputs(w)["train"]
    idx = {p.id: i for i, p in enumerate(tr)}
    forget_rows = [idx[i] for i in res.top[res.top.chosen_judged_bad].id]
    sel = {(tr[i].prompt, tr[i].chosen) for i in forget_rows}  # the chain's retain sample
    perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    retain_rows = [i for i in perm if (tr[i].prompt, tr[i].chosen) not in sel][: cfg.max_retain]
    plan = EditPlan(fmt, is_bad, res.cases, tr, res.attribution.site, res.contrast.direction, "",
                    forget_rows, retain_rows, w.sft_model, max_new_tokens=cfg.max_new_tokens)
    forget, retain = [tr[i] for i in forget_rows], [tr[i] for i in keep_rows(plan)]
    trig = {p.prompt: p for p in w.eval["trigger"]}
    ordinary_all = list(w.eval["ordinary"])

    def extra(model, prompts, responses, kv_cache):
        return {"trigger_good": good_answer_rate(model, [trig[p] for p in prompts], responses),
                "kl_gold_ordinary": kl(w.gold_model, model, ordinary_all)}

    ver = Verifier(w.model, fmt, is_bad, res.cases.heldout,
                   [p.prompt for p in ordinary_all][: cfg.max_ordinary], cfg.max_new_tokens,
                   extra=extra)
    base = {"unedited": ver.measure(w.model)[0], "gold": ver.measure(w.gold_model)[0]}
    bu, bg = base["unedited"]["bad_rate_heldout"], base["gold"]["bad_rate_heldout"]
    kl_tuned = base["unedited"]["kl_gold_ordinary"]
    say(f"forget {len(forget)} pairs ({int(res.top[res.top.chosen_judged_bad].in_truth.sum())} "
        f"poisoned), retain {len(retain)}, Site {plan.site.key}; held-out bad unedited {bu:.2f}, "
        f"gold {bg:.2f}; KL gold vs tuned {kl_tuned:.4f}")
    rows: list[dict] = []

    def add(method: str, family: str, m: dict, **knob) -> None:
        r = {"method": method, "family": family, "seed": seed, **knob,
             "gap_closed": (bu - m["bad_rate_heldout"]) / (bu - bg),
             "kl_gold_vs_tuned": m["kl_gold_ordinary"] / kl_tuned,
             "trigger_good": m["trigger_good"], "ordinary_good": m["good_rate_ordinary"],
             "bad_rate_heldout": m["bad_rate_heldout"], "kl_gold_ordinary": m["kl_gold_ordinary"],
             "kl_tuned_ordinary": m["kl_ordinary"], "seconds": time.perf_counter() - t_start}
        rows.append(r)

    for name in ("unedited", "gold"):
        add(name, "reference", base[name])
    basis = directions(w, res, max(max(PROJECT_K), max(ORTHO_K)))
    for k in PROJECT_K:
        for a in ALPHAS:
            iv = Project(basis[:k], site=plan.site, positions="all", strength=a)
            add(f"project k={k}", "project", ver.measure(w.model, lambda iv=iv: apply(w.model, iv),
                                                         True)[0], strength=a, k=k)
        say(f"project k={k}: gap {rows[-1]['gap_closed']:.2f}, KL {rows[-1]['kl_gold_vs_tuned']:.2f}x at α=1")
    for k in ORTHO_K:
        with orthogonalize_(w.model, basis[:k]):
            add("orthogonalize", "orthogonalize", ver.measure(w.model)[0], k=k, writers="all")
    for kinds in ORTHO_KINDS:
        with orthogonalize_(w.model, basis[:1], writers=list(kinds)):
            add(f"orthogonalize {'+'.join(kinds)} only", "orthogonalize", ver.measure(w.model)[0],
                k=1, writers="+".join(kinds))
    say("orthogonalize: " + ", ".join(f"k={r['k']} {r['writers']}: gap {r['gap_closed']:.2f} "
                                      f"KL {r['kl_gold_vs_tuned']:.2f}x"
                                      for r in rows if r["family"] == "orthogonalize"))
    ucfg = UnlearnConfig(eval_every=eval_every)
    for name in objectives:
        obj, weights, detail = (EDIT_OBJECTIVE if name in ("flip", "u2a") else name), None, ""
        if name == "u2a":  # as studies.edits.run_edits: SFT answers are the good side
            good = generate(w.sft_model, fmt, res.cases.prompts, cfg.max_new_tokens)[0]
            held = [(p, r, g) for p, r, g in zip(res.cases.prompts, res.cases.responses, good)
                    if not is_bad(g) and g.strip() and r.strip()]
            u = u2a_weights(w.model, forget, held, obj, encode=fmt.encode_pairs)
            weights, detail = u.weights, f"{len(u.selected)} of {len(forget)} weighted > 0"
        points: list[dict] = []

        def measure(model, points=points):
            points.append(ver.measure(model)[0])
            return points[-1]["bad_rate_heldout"]

        # the chain's stop metric (studies.edits._tracker): attribution-half bad prompts
        tracker = BadAnswerTracker(fmt, is_bad, res.cases.prompts, min(16, cfg.max_new_tokens))
        add(name, "unlearn", base["unedited"], step=0, phase="start", attr_half_bad=float("nan"))
        r = unlearn(w.model, forget, retain, obj, ucfg, weights=weights, encode=fmt.encode_pairs,
                    metrics={"heldout_bad": measure, "attr_half_bad": tracker}, progress=False)
        try:
            ev = r.history.dropna(subset=["heldout_bad"])
            assert len(ev) == len(points), (len(ev), len(points))  # one measurement per eval row
            for (_, h), m in zip(ev.iterrows(), points):
                add(name, "unlearn", m, step=int(h.step), phase=h.phase,
                    attr_half_bad=float(h.attr_half_bad), retain_kl_eval=float(h.retain_kl_eval),
                    detail=detail)
        finally:
            r.undo()
        say(f"{name}: {len(points)} points in {r.seconds:.0f} s; last gap "
            f"{rows[-1]['gap_closed']:.2f}, KL {rows[-1]['kl_gold_vs_tuned']:.2f}x {detail}")
    df = pd.DataFrame(rows)
    df["n_forget"], df["n_retain"], df["site"] = len(forget), len(retain), plan.site.key
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"unlearning_tradeoff_{world}_s{seed}.csv")
    atomic_write(path, lambda p: df.to_csv(p, index=False))
    print(best_points(df).to_string(index=False))
    say(f"wrote {path}")


def best_points(df):
    """Per method and seed: the point of largest gap closed with KL <= 1.2x the tuned model's
    (ties: lower KL)."""
    import pandas as pd

    out = []
    for (seed, method), g in df[df.family != "reference"].groupby(["seed", "method"], sort=False):
        ok = g[g.kl_gold_vs_tuned <= 1.2].sort_values(["gap_closed", "kl_gold_vs_tuned"],
                                                       ascending=[False, True])
        r = ok.iloc[0] if len(ok) else None
        knob = "" if r is None else ", ".join(
            f"{c}={r[c]:g}" if isinstance(r[c], float) else f"{c}={r[c]}"
            for c in ("step", "strength", "k", "writers") if c in r and pd.notna(r[c]))
        out.append({"seed": seed, "method": method, "best (KL <= 1.2x)": knob or "none",
                    "gap_closed": None if r is None else round(r.gap_closed, 2),
                    "kl_x_tuned": None if r is None else round(r.kl_gold_vs_tuned, 2),
                    "trigger_good": None if r is None else r.trigger_good,
                    "ordinary_good": None if r is None else r.ordinary_good,
                    "max gap (any KL)": round(g.gap_closed.max(), 2)})
    return pd.DataFrame(out)


def plot(out: str) -> None:
    """One panel per seed: KL to gold (x tuned's, log) against gap closed, one curve per
    method; dotted lines at the targets (gap 0.95, KL 1.2x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from mechunlearn.plots import save_figure

    files = sorted(glob.glob(os.path.join(out, "unlearning_tradeoff_hard_s*.csv")))
    if not files:
        raise SystemExit(f"no unlearning_tradeoff_hard_s*.csv in {out}: run with --seed first")
    df = pd.concat([pd.read_csv(f) for f in files])
    seeds = sorted(df.seed.unique())
    fig, axes = plt.subplots(1, len(seeds), figsize=(7 * len(seeds), 6), squeeze=False)
    methods = [m for m in dict.fromkeys(df.method) if m not in ("unedited", "gold")]
    unl = [m for m in methods if df[df.method == m].family.iloc[0] == "unlearn"]
    proj = [m for m in methods if df[df.method == m].family.iloc[0] == "project"]
    colours = {**{m: f"C{i % 5}" for i, m in enumerate(unl)},
               **{m: ("C5", "C6", "C7")[i % 3] for i, m in enumerate(proj)}}
    kind_marks = iter("v<>dph" * 3)
    for ax, seed in zip(axes[0], seeds):
        d = df[df.seed == seed]
        for m in methods:
            g = d[d.method == m]
            if g.empty:
                continue
            fam = g.family.iloc[0]
            ls, mk = {"unlearn": ("-", "o"), "project": ("--", "s")}.get(fam, (":", "^"))
            if fam == "orthogonalize" and (g.writers != "all").all():  # one writer kind: a point
                mk = colours.setdefault(f"mark {m}", next(kind_marks))
            c = colours.get(m, "C8" if mk == "^" else "C9")
            g = g.sort_values("step" if fam == "unlearn" else ("strength" if fam == "project" else "k"))
            ax.plot(g.gap_closed, g.kl_gold_vs_tuned, ls=ls, marker=mk, ms=4, color=c,
                    label=m, lw=1.2)
            for _, r in g.iterrows():  # knob values next to the points
                lab = (f"k={int(r.k)}" if fam == "orthogonalize" and r.writers == "all" else
                       f"α={r.strength:g}" if fam == "project" and r.k == 1 and r.strength > 0
                       else None)
                if lab:
                    ax.annotate(lab, (r.gap_closed, r.kl_gold_vs_tuned), fontsize=6, color=c,
                                xytext=(-22, 3), textcoords="offset points")
            if fam == "unlearn":  # the last step, and where the chain's default loop stops
                last = g.iloc[-1]
                ax.annotate(f"{int(last.step)}", (last.gap_closed, last.kl_gold_vs_tuned),
                            fontsize=6, color=c, xytext=(3, 0), textcoords="offset points")
                stop = g[(g.step > 0) & (g.attr_half_bad <= 0)]
                if len(stop):
                    r = stop.iloc[0]
                    ax.scatter(r.gap_closed, r.kl_gold_vs_tuned, s=70, facecolors="none",
                               edgecolors=c, lw=1.2)
        r = d[d.method == "unedited"]
        if len(r):
            ax.scatter(r.gap_closed, r.kl_gold_vs_tuned, marker="X", s=80, color="k", zorder=5,
                       label="unedited (gold: gap 1, KL 0, off the log axis)")
        ax.axvline(0.95, ls=":", color="0.4")
        ax.axhline(1.2, ls=":", color="0.4")
        ax.set_yscale("log")
        ax.set_xlabel("bad-response gap closed (50 held-out trigger prompts)")
        ax.set_ylabel("KL(gold || model), ordinary prompts, x tuned model's")
        ax.set_title(f"hard world, seed {seed}", fontsize=9)
    fig.suptitle("Unlearning: one point per evaluation step (last step labelled; ring: where the "
                 "default loop would stop); projection: strength 0 to 1; orthogonalisation: "
                 "k = 1 to 8", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = os.path.join(out, "unlearning_tradeoff_hard.png")
    save_figure(fig, path, close=True)
    print(best_points(df).to_string(index=False))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world seed (0: the preset)")
    ap.add_argument("--plot", action="store_true", help="only draw the figure from the CSVs")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--world", default="hard", help="toy world preset ('tiny': a quick check)")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES),
                    help=f"comma-separated subset of {OBJECTIVES}")
    ap.add_argument("--eval-every", type=int, default=5, help="unlearning steps between points")
    args = ap.parse_args()
    objs = tuple(o for o in args.objectives.split(",") if o)
    if bad := [o for o in objs if o not in OBJECTIVES]:
        raise SystemExit(f"--objectives: unknown {bad}; choose from {OBJECTIVES}")
    if args.eval_every < 1:
        raise SystemExit("--eval-every must be >= 1")
    torch.set_num_threads(1)
    if args.plot:
        plot(args.out)
    else:
        run(args.seed, args.out, objs, args.eval_every, args.world)


if __name__ == "__main__":
    main()
