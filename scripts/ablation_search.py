"""Pareto search of abliteration parameters on a toy world's refusal bias.

    python scripts/ablation_search.py --world tiny --trials 60 --out docs/ablation_search_tiny

Writes OUT.csv (every trial), OUT.png (front) and OUT_pca_ranking.csv, and prints the front.
See mechunlearn.studies.ablation_search and docs/directions.md.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="tiny")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="ablation_search")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import pandas as pd

    from mechunlearn import toyworld
    from mechunlearn.ablation import front, plot_front
    from mechunlearn.studies.ablation_search import pca_ranking, search_toyworld

    world = toyworld.load(args.world)
    t0 = time.perf_counter()
    df = search_toyworld(world, n_trials=args.trials, seed=args.seed,
                         progress=lambda t, r: print(f"trial {t}: refusal {r['target_rate']:.2f} "
                                                     f"kl {r['kl']:.3f}", flush=True))
    secs = time.perf_counter() - t0
    df.to_csv(f"{args.out}.csv", index=False)
    plot_front(df, title=f"toy world {args.world!r}: refusal vs KL", save=f"{args.out}.png")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    cols = ["trial", "target_rate", "kl", "borderline_good", "ordinary_good", "method",
            "per_layer", "direction_index", "norm_preserving", "attn_max", "attn_peak",
            "attn_width", "attn_min_frac", "mlp_max", "mlp_peak", "mlp_width", "mlp_min_frac"]
    print(front(df)[cols].round(3).to_string(index=False))
    print(f"{len(df) - 1} trials in {secs:.0f} s")
    pr = pca_ranking(world)
    pr.to_csv(f"{args.out}_pca_ranking.csv", index=False)
    print(pr.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
