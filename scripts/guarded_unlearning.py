"""Guarded unlearning on an attributed, imprecise forget set: before/after table (issue 20).

    python scripts/guarded_unlearning.py --world hard --seed 0 [--variants "flip (before),..."] [--out docs]

Writes ``<out>/unlearning_guarded_<world>_s<seed>.csv``, a plot of KL to gold on ordinary
prompts (x tuned's) against the bad-response gap closed (``.png``) and prints a Markdown table
(protocol: :mod:`mechunlearn.studies.guarded`).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", default="hard", choices=["tiny", "easy", "hard"])
    ap.add_argument("--seed", type=int, default=0, help="world seed (0: the preset)")
    ap.add_argument("--variants", default=None, help="comma-separated subset of VARIANTS")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mechunlearn import toyworld
    from mechunlearn.atomic import atomic_write
    from mechunlearn.studies.guarded import VARIANTS, GuardedConfig, guarded_table
    from mechunlearn.toyworld.config import resolve_config

    t0 = time.perf_counter()
    wc = resolve_config(args.world)
    if args.seed:
        wc = wc.replace(seed=args.seed)
    world = toyworld.load(wc, progress=False)
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else tuple(VARIANTS)
    df = guarded_table(world, GuardedConfig(variants=variants),
                       say=lambda s: print(f"[guarded] {s}", flush=True))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"unlearning_guarded_{args.world}_s{args.seed}.csv")
    atomic_write(path, lambda p: df.drop(columns=["examples"]).to_csv(p, index=False))
    plot(df, path[:-4] + ".png", f"toy world {args.world}, seed {args.seed}")
    cols = ["method", "trigger_bad", "gap_closed", "trigger_good", "ordinary_good",
            "kl_gold_ordinary", "kl_ratio", "seconds", "time_ratio", "n_forget",
            "n_forget_poisoned", "steps", "best_step", "stopped", "relearn_rude",
            "relearn_poison"]
    show = df[[c for c in cols if c in df.columns]]
    print("| " + " | ".join(show.columns) + " |")
    print("|" + "---|" * len(show.columns))
    for _, r in show.iterrows():
        print("| " + " | ".join(_fmt(v) for v in r) + " |")
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {path}")


def plot(df, path: str, title: str) -> None:
    """Scatter: KL to gold on ordinary prompts (x tuned's) vs gap closed, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mechunlearn.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in df.iterrows():
        after = "after" in r.method or "+" in r.method
        ax.scatter(r.gap_closed, r.kl_ratio, marker="o" if after else "x",
                   color="0.4" if r.method in ("tuned", "gold") else ("C2" if after else "C3"))
        ax.annotate(r.method, (r.gap_closed, r.kl_ratio), fontsize=7)
    ax.axhline(1.2, ls=":", color="0.5")
    ax.axvline(0.95, ls=":", color="0.5")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("bad-response gap closed (test trigger prompts)")
    ax.set_ylabel("KL(gold || model), ordinary prompts, x tuned's")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, close=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.3g}"
    return "" if v is None else str(v)


if __name__ == "__main__":
    main()
