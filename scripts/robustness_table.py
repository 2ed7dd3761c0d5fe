"""The robustness table on the toy ``hard`` world: every demo edit and the gold model under
relearning, int8 / NF4 quantisation, direction ablation, and depth (patching, UDS).

Runs the diagnose chain (the demo's edits: project, orthogonalize, unlearn (flip), u2a; gold
as a reference row) with :func:`mechunlearn.studies.robustness_toyworld.robustness_toyworld`, per seed,
and writes ``docs/robustness_hard.csv`` (one row per seed x variant) and
``docs/robustness_hard_layers.csv`` (per layer). Prints the time the checks added to the chain.

    python scripts/robustness_table.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from mechunlearn import toyworld
from mechunlearn.atomic import atomic_write
from mechunlearn.outputs import check_output_file
from mechunlearn.studies.robustness_toyworld import robustness_toyworld
from mechunlearn.toyworld.config import resolve_config

COLS = ["seed", "variant", "bad_rate_heldout", "trigger_good", "kl_gold_ordinary",
        "relearn_bad_rate", "int8_bad_rate", "nf4_bad_rate", "ablation_project_bad_rate",
        "ablation_project_where", "ablation_clamp_bad_rate", "ablation_clamp_where", "depth",
        "recovered_last", "effect", "uds", "seconds", "robustness_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="docs/robustness_hard.csv")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    layers_out = args.out.replace(".csv", "_layers.csv")
    for p in (args.out, layers_out):
        check_output_file(p, overwrite=args.overwrite)
    rows, layers = [], []
    for seed in args.seeds:
        cfg = resolve_config("hard").replace(seed=seed)
        world = toyworld.load(cfg, progress=False)
        original = toyworld.load(cfg, progress=False).model  # a second, unedited copy
        t0 = time.perf_counter()
        res = robustness_toyworld(world, original, say=print)
        wall = time.perf_counter() - t0
        e = res.edits.assign(seed=seed)
        rows.append(e[[c for c in COLS if c in e.columns]])
        layers.append(res.info["robustness_per_layer"].assign(seed=seed))
        extra = float(e.robustness_seconds.fillna(0).sum())
        print(f"seed {seed}: chain {wall:.0f} s, of which robustness checks {extra:.0f} s "
              f"(+{extra / max(wall - extra, 1e-9):.0%} over the chain without them)")
    df = pd.concat(rows, ignore_index=True)
    per = pd.concat(layers, ignore_index=True)
    atomic_write(args.out, lambda tmp: df.to_csv(tmp, index=False, float_format="%.4f"))
    atomic_write(layers_out, lambda tmp: per.to_csv(tmp, index=False, float_format="%.4f"))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
