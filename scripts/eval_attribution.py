"""Evaluate attribution methods on a toy world (AUC / precision@k sweep + counterfactual).

    python scripts/eval_attribution.py --world hard [--cache-dir DIR] [--max-queries 64]
        [--counterfactual] [--out docs]

Writes ``<out>/attribution_<world>.csv`` (per-query rows), ``attribution_<world>_summary.csv``
(mean per method and Site), ``attribution_<world>_auc.png`` (AUC by layer and method) and,
with ``--counterfactual``, ``attribution_<world>_counterfactual.csv``. Prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pandas as pd
import torch


def _atomic_csv(df: pd.DataFrame, path: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".csv", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def load_folder(folder: str):
    """A World from a built cache folder, with the config recorded in its manifest."""
    from pathlib import Path

    from mechunlearn.models import load_bridge
    from mechunlearn.toyworld import World, WorldConfig, WorldData

    f = Path(folder)
    man = json.loads((f / "manifest.json").read_text())
    cfg = WorldConfig.from_dict(man["config"])
    data = WorldData.from_dict(json.loads((f / "data.json").read_text()))
    b = {n: load_bridge(f / "models" / n) for n in ("tuned", "sft", "gold")}
    return World(config=cfg, model=b["tuned"], sft_model=b["sft"], gold_model=b["gold"],
                 tokenizer=b["tuned"].tokenizer, train=data.train, eval=data.eval,
                 truth=data.truth, timings=json.loads((f / "timings.json").read_text()),
                 metrics=json.loads((f / "metrics.json").read_text()), path=f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", default="hard", choices=["tiny", "easy", "hard"])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--world-dir", default=None,
                    help="a built world folder to use as is (its own config from manifest.json), "
                         "e.g. one built before the presets changed")
    ap.add_argument("--max-queries", type=int, default=64)
    ap.add_argument("--methods", default=None, help="comma-separated names from mechunlearn.attribution.METHODS (default: DEFAULT_METHODS, no EK-FAC)")
    ap.add_argument("--grad-loss", default="dpo", choices=["dpo", "nll"])
    ap.add_argument("--convex-grad-locality", type=float, default=0.0,
                    help="locality (mu) of the convex decomposition on gradient features")
    ap.add_argument("--counterfactual", action="store_true")
    ap.add_argument("--cf-methods", default="convex,convex_grad,best_baseline",
                    help="methods whose top-k is removed; 'best_baseline' = the best non-convex, "
                         "non-random method by AUC")
    ap.add_argument("--cf-random-seeds", type=int, default=1)
    ap.add_argument("--cf-k", type=int, default=None, help="removal size (default: #poisoned)")
    ap.add_argument("--reference-fallback", action="store_true",
                    help="use reference bad responses if the tuned model gives none (smoke test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mechunlearn import toyworld
    from mechunlearn.studies.attribution_eval import (
        DEFAULT_METHODS,
        EvalConfig,
        bad_queries,
        best_sites,
        evaluate_world,
        plot_auc,
        summarize,
    )
    from mechunlearn.studies.counterfactual import counterfactual, random_ids, top_k_ids

    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    t0 = time.perf_counter()
    if args.world_dir:
        world = load_folder(args.world_dir)
    else:
        world = toyworld.load(args.world, cache_dir=args.cache_dir, threads=args.threads)
    print(f"world {args.world} ({world.path.name}) loaded in {time.perf_counter() - t0:.0f}s; "
          f"build metrics: trigger/bad tuned={world.metrics['tuned'].get('trigger/bad')} "
          f"gold={world.metrics['gold'].get('trigger/bad')}")
    methods = tuple(args.methods.split(",")) if args.methods else DEFAULT_METHODS
    from mechunlearn.attribution import ConvexConfig

    cfg = EvalConfig(methods=methods, max_queries=args.max_queries, grad_loss=args.grad_loss,
                     convex_grad=ConvexConfig(center=False, normalize="l2", pool_metric="cosine",
                                              locality=args.convex_grad_locality))
    queries = bad_queries(world, cfg.max_queries, reference_fallback=args.reference_fallback)
    means: dict = {}
    df = evaluate_world(world, cfg, queries=queries, mean_scores=means)
    df.insert(0, "world", args.world)
    summary = summarize(df)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"attribution_{args.world}")
    _atomic_csv(df, stem + ".csv")
    _atomic_csv(summary, stem + "_summary.csv")
    plot_auc(summary, stem + "_auc.png", title=args.world)
    print(summary.drop(columns=["world"], errors="ignore").to_string(index=False))
    best = best_sites(summary)
    print("\nbest Site per method (by AUC):")
    print(best.to_string(index=False))
    if args.counterfactual:
        ids = [p.id for p in world.train]
        k = args.cf_k or len(world.truth.poisoned_ids)
        sets = {"none (retrain on all pairs)": [],
                "truth (all poisoned ids)": list(world.truth.poisoned_ids)}
        baselines = best[~best["method"].str.startswith("convex") & (best["method"] != "random")]
        for m in args.cf_methods.split(","):
            if m == "best_baseline" and len(baselines):
                m = str(baselines["method"].iloc[0])
            row = best[best["method"] == m]
            if len(row) == 0:
                continue
            site = row["site"].iloc[0]
            sets[f"{m} top-{k} @ {site}"] = top_k_ids(means[(m, site)], ids, k)
        for seed in range(args.cf_random_seeds):
            sets[f"random {k} (seed {seed})"] = random_ids(ids, k, seed=seed)
        cf = counterfactual(world, sets)
        cf.insert(0, "world", args.world)
        _atomic_csv(cf, stem + "_counterfactual.csv")
        print("\ncounterfactual (retrain DPO without the removal set):")
        print(cf.to_string(index=False))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                      "n_queries": len(queries[0])}))


if __name__ == "__main__":
    main()
