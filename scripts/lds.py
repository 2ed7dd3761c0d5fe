"""Linear datamodeling score (LDS) of the attribution methods on the ``tiny`` toy world.

    python scripts/lds.py --subsets 16 --out docs/attribution_lds.csv --overwrite

Retrains the world's DPO stage (from its SFT model, same config and seed) on ``--subsets``
random halves of the 500 training pairs, measures for every bad answer of the tuned model on
held-out trigger prompts the margin ``log p(bad | q) - log p(good | q)`` (good = the SFT
model's greedy answer), and reports, per method, the mean over queries of the Spearman
correlation between that margin and the method's additive prediction (sum of the method's
scores over the kept pairs): ``mechunlearn.studies.lds`` (Park et al., TRAK,
arXiv:2303.14186). Methods go through ``explain_preferences`` (Sites chosen by split-half
stability where a method has a Site) plus centred RepSim, random scores and, as a ceiling that
uses the planted truth, the poisoned-pair indicator. ``--actual-cache FILE`` keeps the retrained
margins (the first subsets of a larger ``--subsets`` are the same, so a rerun retrains only
the new ones).
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch


def scores_by_method(w, prompts, bad, good):
    """{method: [Q, N] scores} and {method: chosen Site key}."""
    from mechunlearn.attribution import (
        GradSim,
        RepSim,
        choose_by_stability,
        explain_preferences,
        gradient_features,
    )
    from mechunlearn.features import extract
    from mechunlearn.sites import Site
    from mechunlearn.toyworld import encode_pairs
    from mechunlearn.toyworld import format_prompt as fp
    from mechunlearn.toyworld import format_response as fr

    train = [(fp(p.prompt), fr(p.chosen), fr(p.rejected)) for p in w.train]
    ids = [p.id for p in w.train]
    bd = [(fp(p), fr(b)) for p, b in zip(prompts, bad)]
    gd = [fr(g) for g in good]
    sites = [Site(f"blocks.{i}.hook_resid_post", "response_mean")
             for i in range(int(w.model.cfg.n_layers))]
    out, chosen = {}, {}

    def stack(res):
        return torch.stack([a.scores.double() for a in res.per_query])

    common = dict(good=gd, ref_model=w.sft_model, k=10, beta=w.config.beta, ids=ids)
    for name, space in (("contrast", "activations"), ("dpo_act_gradient", "gradients"),
                        ("contrast+dpo", "both")):
        cand = {s.key: stack(explain_preferences(w.model, s, train, bd, space=space, **common))
                for s in sites}
        best, _ = choose_by_stability(cand, m=10)
        out[name], chosen[name] = cand[best], best
    tb_tr = encode_pairs(w.tokenizer, [p.prompt for p in w.train], [p.chosen for p in w.train])
    tb_q = encode_pairs(w.tokenizer, list(prompts), list(bad))
    cand = {}
    for s in sites:
        rs = RepSim(extract(w.model, tb_tr, s, progress=False), k=10, center=True)
        cand[s.key] = torch.stack([a.scores.double() for a in
                                   rs.attribute_many(extract(w.model, tb_q, s, progress=False))])
    best, _ = choose_by_stability(cand, m=10)
    out["repsim_centered"], chosen["repsim_centered"] = cand[best], best
    par = explain_preferences(w.model, None, train, bd, space="parameters", **common)
    out["dpo_param_gradient"], chosen["dpo_param_gradient"] = stack(par), "parameters"
    # TracIn's dot product of the same (count-sketched) gradients, the additive estimate
    names = [n for n, p_ in w.model.named_parameters() if p_.requires_grad]
    kw = dict(loss="dpo", ref_model=w.sft_model, beta=w.config.beta, params=names,
              projection_dim=4096)
    gs = GradSim(gradient_features(w.model, train, **kw), k=10, metric="dot")
    qg = gradient_features(w.model, [(p, b, g) for (p, b), g in zip(bd, gd)], **kw)
    out["dpo_param_gradient (dot)"] = torch.stack([a.scores.double()
                                                   for a in gs.attribute_many(qg)])
    chosen["dpo_param_gradient (dot)"] = "parameters"
    pooled = explain_preferences(w.model, None, train, bd, space="parameters", pool="auto",
                                 **common)
    out["dpo_param_gradient+pool"] = stack(pooled)
    chosen["dpo_param_gradient+pool"] = f"parameters, k={pooled.per_query[0].info['pool_k']}"
    g = torch.Generator().manual_seed(0)
    out["random"] = torch.randn(len(bd), len(ids), generator=g, dtype=torch.float64)
    poison = torch.tensor([p.poisoned for p in w.train], dtype=torch.float64)
    out["truth (poisoned indicator; uses labels)"] = poison.expand(len(bd), -1).clone()
    return out, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", default="tiny")
    ap.add_argument("--subsets", type=int, default=16)
    ap.add_argument("--frac", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/attribution_lds.csv")
    ap.add_argument("--actual-cache", default=None, help="file keeping the retrained margins")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mechunlearn import toyworld
    from mechunlearn.atomic import atomic_write
    from mechunlearn.outputs import check_output_file
    from mechunlearn.studies.attribution_eval import bad_queries
    from mechunlearn.studies.lds import lds_table, random_subsets, retrain_effects

    out = check_output_file(args.out, overwrite=args.overwrite, suffixes=[".csv"])
    t0 = time.perf_counter()
    w = toyworld.load(args.world)
    qp, bad = bad_queries(w, None)
    prompts = [p.prompt for p in qp]
    good = toyworld.generate_text(w.sft_model, qp)
    masks = random_subsets(len(w.train), args.subsets, args.frac, seed=args.seed)
    done = masks[:0]
    actual = torch.zeros(0, len(prompts), dtype=torch.float64)
    if args.actual_cache and os.path.exists(args.actual_cache):
        saved = torch.load(args.actual_cache)
        m = min(len(saved["masks"]), len(masks))
        if saved["prompts"] == prompts and torch.equal(saved["masks"][:m], masks[:m]):
            done, actual = masks[:m], saved["actual"][:m]
            print(f"[lds] reusing {m} retrained subsets from {args.actual_cache}", flush=True)
    if len(done) < len(masks):
        more = retrain_effects(w, masks[len(done):], prompts, bad, good, progress=print)
        actual = torch.cat([actual, more])
        if args.actual_cache:
            atomic_write(args.actual_cache, lambda p: torch.save(
                {"masks": masks, "prompts": prompts, "actual": actual}, p))
    print(f"[lds] {len(prompts)} bad queries, {args.subsets} subsets; retraining done "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    scores, chosen = scores_by_method(w, prompts, bad, good)
    df = pd.DataFrame(lds_table(scores, masks, actual))
    df["site"] = [chosen.get(m, "") for m in df["method"]]
    df.insert(0, "world", args.world)
    df["frac"] = args.frac
    atomic_write(out, lambda p: df.to_csv(p, index=False))
    print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
