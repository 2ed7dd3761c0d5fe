"""Preference-contrast attribution vs the baselines on several toy worlds (issue 19).

    python scripts/eval_attribution_contrast.py --worlds hard:0,hard:1,hard:2,easy:0 --out docs

For every world (preset:seed; seed 0 is the preset itself) and every Site (resid_post of each
layer, response-mean and last token), each method ranks all training pairs for every bad
answer of the tuned model on held-out trigger prompts. Reported per (world, method, Site):
mean per-query ROC AUC, precision@10 and precision@(n poisoned); the same for the set of all
bad answers (mean of per-query scores, ``Attributor.attribute_set``); and the split-half
stability of the set ranking (top-32), the ground-truth-free criterion used to choose the Site
(``attribution.selection``). Everything goes through the public API.

Methods. Plain features phi(x, chosen) for training pairs and phi(q, bad) for queries:
``repsim`` (cosine), ``repsim_centered``, ``repsim_whitened`` (ridge 1e-2), ``convex``
(ConvexAttributor defaults). Activation gradients at the Site (response-mean only):
``gradsim`` (training: DPO loss with the SFT model as reference; query: NLL of the bad
answer), ``gradsim_dpo`` (query: DPO loss of "bad preferred over the reference answer", so
both sides are preference gradients), ``gradsim_dpo_centered`` (the same, centred cosine),
``contrast+dpo`` (mean of the per-query z-scored ``contrast`` and ``gradsim_dpo_centered``
scores at the Site). Contrast features (``attribution.contrast``): training
c = phi(x, chosen) - phi(x, rejected), query c = phi(q, bad) - phi(q, good) with good = the
SFT (reference) model's greedy answer: ``contrast`` (centred cosine, the default),
``contrast_raw`` (uncentred), ``contrast_whitened``, ``contrast_convex``.

Writes ``<out>/attribution_contrast_<preset>_s<seed>.csv`` per world (one row per method x
Site) and ``<out>/attribution_contrast_summary.csv`` (each method at its stability-chosen
Site and at its best-in-hindsight Site, per world). Prints the tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import pandas as pd
import torch

ACT = ("repsim", "repsim_centered", "repsim_whitened", "convex")
CON = ("contrast", "contrast_raw", "contrast_whitened", "contrast_convex")
GRAD = ("gradsim", "gradsim_dpo", "gradsim_dpo_centered", "contrast+dpo")


def _atomic_csv(df: pd.DataFrame, path: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".csv", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _metrics(S: torch.Tensor, positive: torch.Tensor, n_pos: int) -> dict[str, float]:
    from mechunlearn.attribution.selection import split_half_stability
    from mechunlearn.studies.attribution_eval import ranking_metrics

    per = [ranking_metrics(s, positive, [10, n_pos]) for s in S]
    out = {k: float(sum(p[k] for p in per) / len(per)) for k in per[0]}
    out = {("p@n" if k == f"p@{n_pos}" else k): v for k, v in out.items()}
    st = ranking_metrics(S.mean(0), positive, [10, n_pos])
    out.update({"set_auc": st["auc"], "set_p@10": st["p@10"], "set_p@n": st[f"p@{n_pos}"]})
    out["stability"] = split_half_stability(S, m=32)
    return out


def evaluate_one(preset: str, seed: int, max_queries: int | None, threads: int) -> pd.DataFrame:
    """All methods at all Sites on one world; one row per (method, Site)."""
    from mechunlearn import toyworld
    from mechunlearn.attribution import (
        Attribution,
        ContrastAttributor,
        ContrastFeatures,
        ConvexAttributor,
        GradSim,
        RepSim,
        gradient_features,
    )
    from mechunlearn.features import extract
    from mechunlearn.sites import Site
    from mechunlearn.studies.attribution_eval import bad_queries
    from mechunlearn.toyworld import encode_pairs, format_prompt, format_response, is_bad
    from mechunlearn.toyworld.config import PRESETS

    cfg = PRESETS[preset] if seed == 0 else PRESETS[preset].replace(seed=seed)
    t0 = time.perf_counter()
    w = toyworld.load(cfg, threads=threads)
    train = list(w.train)
    ids = [p.id for p in train]
    positive = torch.tensor([p.poisoned for p in train])
    n_pos = int(positive.sum())
    q_prompts, q_bad = bad_queries(w, max_queries)
    # the "good alternative" without ground truth: the reference (SFT) model's greedy answer
    q_good = toyworld.generate_text(w.sft_model, q_prompts)
    n_ref_bad = sum(is_bad(r) for r in q_good)
    print(f"[{preset}:{seed}] {w.path.name}: {len(q_prompts)} bad queries, {len(train)} pairs "
          f"({n_pos} poisoned); reference answers bad: {n_ref_bad}", flush=True)
    tok, model = w.tokenizer, w.model
    sites = [Site(f"blocks.{i}.hook_resid_post", pos) for i in range(int(model.cfg.n_layers))
             for pos in ("response_mean", "last")]
    qp = [p.prompt for p in q_prompts]

    def feats(prompts: list[str], responses: list[str], fid: Any = None) -> dict:
        return extract(model, encode_pairs(tok, prompts, responses), sites, batch_size=64,
                       ids=fid, progress=False)

    f_ch = feats([p.prompt for p in train], [p.chosen for p in train], ids)
    f_rj = feats([p.prompt for p in train], [p.rejected for p in train], ids)
    f_qb, f_qg = feats(qp, q_bad), feats(qp, q_good)
    rows: list[dict[str, Any]] = []

    keep: dict[tuple[str, Site], torch.Tensor] = {}

    def run(name: str, att: Any, queries: Any, site: Site, per: Any = None) -> None:
        t = time.perf_counter()
        per = att.attribute_many(queries) if per is None else per
        S = torch.stack([a.scores for a in per])
        keep[(name, site)] = S
        ms = (time.perf_counter() - t) / len(per) * 1e3
        res = [a.residual for a in per]
        rows.append({"world": f"{preset}:{seed}", "method": name, "site": site.key,
                     "layer": int(site.layer), "position": str(site.position),
                     **_metrics(S, positive, n_pos), "residual": sum(res) / len(res),
                     "ms_per_query": ms})

    for s in sites:
        tr, q = f_ch[s], f_qb[s]
        run("repsim", RepSim(tr), q, s)
        run("repsim_centered", RepSim(tr, center=True), q, s)
        run("repsim_whitened", RepSim(tr, whiten=1e-2), q, s)
        run("convex", ConvexAttributor(tr), q, s)
        ctr = ContrastFeatures.from_pair(f_ch[s], f_rj[s])
        cq = ContrastFeatures.from_pair(f_qb[s], f_qg[s])
        run("contrast", ContrastAttributor(ctr), cq, s)
        run("contrast_raw", ContrastAttributor(ctr, center=False), cq, s)
        run("contrast_whitened", ContrastAttributor(ctr, whiten=1e-2), cq, s)
        run("contrast_convex", ContrastAttributor(ctr, scorer="convex"), cq, s)
    print(f"[{preset}:{seed}] activation methods done {time.perf_counter() - t0:.0f}s", flush=True)
    gsites = [s for s in sites if s.position == "response_mean"]
    fmt = [(format_prompt(p.prompt), format_response(p.chosen), format_response(p.rejected))
           for p in train]
    g_tr = gradient_features(model, fmt, gsites, loss="dpo", ref_model=w.sft_model,
                             beta=cfg.beta, ids=ids, batch_size=32)
    g_nll = gradient_features(model, [(format_prompt(p), format_response(r))
                                      for p, r in zip(qp, q_bad)], gsites, loss="nll",
                              batch_size=32)
    g_dpo = gradient_features(model, [(format_prompt(p), format_response(b), format_response(g))
                                      for p, b, g in zip(qp, q_bad, q_good)], gsites, loss="dpo",
                              ref_model=w.sft_model, beta=cfg.beta, batch_size=32)
    for s in gsites:
        run("gradsim", GradSim(g_tr[s]), g_nll[s], s)
        run("gradsim_dpo", GradSim(g_tr[s]), g_dpo[s], s)
        run("gradsim_dpo_centered", GradSim(g_tr[s], center=True), g_dpo[s], s)
        # equal-weight ensemble of two views of the same lesson: per-query z-scores of the
        # centred contrast cosine and the centred DPO-gradient cosine at this Site
        z = [(S - S.mean(1, keepdim=True)) / S.std(1, keepdim=True)
             for S in (keep[("contrast", s)], keep[("gradsim_dpo_centered", s)])]
        ens = [Attribution((), (), torch.zeros(0), float("nan"), (z[0][i] + z[1][i]) / 2,
                           "ensemble") for i in range(len(qp))]
        run("contrast+dpo", None, None, s, per=ens)
    print(f"[{preset}:{seed}] all done {time.perf_counter() - t0:.0f}s", flush=True)
    df = pd.DataFrame(rows)
    df["n_queries"], df["n_ref_bad"] = len(q_prompts), n_ref_bad
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Each method at its stability-chosen Site and its best-AUC Site, per world."""
    out = []
    for (world, method), g in df.groupby(["world", "method"], sort=False):
        chosen = g.loc[g["stability"].idxmax()]
        best = g.loc[g["auc"].idxmax()]
        out.append({"world": world, "method": method, "chosen_site": chosen["site"],
                    "stability": chosen["stability"], "auc": chosen["auc"],
                    "p@10": chosen["p@10"], "p@n": chosen["p@n"], "set_auc": chosen["set_auc"],
                    "set_p@n": chosen["set_p@n"], "best_site": best["site"],
                    "best_auc": best["auc"], "best_p@n": g["p@n"].max(),
                    "best_set_p@n": g["set_p@n"].max()})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worlds", default="hard:0,hard:1,hard:2,easy:0",
                    help="comma-separated preset:seed")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse an existing per-world CSV instead of recomputing it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    os.makedirs(args.out, exist_ok=True)
    frames = []
    for spec in args.worlds.split(","):
        preset, seed = spec.split(":") if ":" in spec else (spec, "0")
        path = os.path.join(args.out, f"attribution_contrast_{preset}_s{seed}.csv")
        if args.reuse and os.path.exists(path):
            df = pd.read_csv(path)
        else:
            df = evaluate_one(preset, int(seed), args.max_queries, args.threads)
            _atomic_csv(df, path)
        print(df.drop(columns=["world", "n_queries", "n_ref_bad"]).round(3).to_string(index=False))
        frames.append(df)
    summary = summarize(pd.concat(frames, ignore_index=True))
    _atomic_csv(summary, os.path.join(args.out, "attribution_contrast_summary.csv"))
    print(summary.round(3).to_string(index=False))
    hard = summary[summary["world"].str.startswith("hard")]
    if len(hard):
        agg = hard.groupby("method")[["auc", "p@n", "set_auc", "set_p@n", "best_auc",
                                      "best_p@n"]].agg(["mean", "std"])
        print("\nhard worlds, mean / sd over seeds (chosen Site; best_* in hindsight):")
        print(agg.round(3).to_string())


if __name__ == "__main__":
    main()
