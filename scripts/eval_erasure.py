"""Do direction edits hold downstream? Erasure report on all-MiniLM-L6-v2 (issue 21).

For each contrast (``harm``, ``gender``, ``null``; see scripts/erasure_data.py) and seed, fit
edits on the train split at mean-pooled ``blocks.L.hook_resid_post`` and report, per edit and
layer, held-out linear and MLP probe accuracy (probes trained on the edited train features)
and the edit's cost on 100 neutral hh-rlhf assistant turns (MiniLM's MLM head is random, so
no KL: ``emb_dist`` = 1 − cos of the mean-pooled final representation, ``sim_spearman`` = rank
correlation of pairwise similarities before/after).

Edits: ``project@L`` (difference of means at L), ``leace@L`` (LEACE eraser at L),
``orth@L`` (the same mean difference orthogonalised out of every residual writer's weights),
``project@L..5`` / ``leace@L..5`` (one direction per layer from L on, each fitted on features
edited at the earlier layers), ``iterative@L..5`` (``fit_erasure``: rounds adding
mean-difference and covariance directions where validation probes still read the concept).

    python scripts/eval_erasure.py --out docs/erasure_eval           # ~20 min on 2 busy cores
    python scripts/eval_erasure.py --contrasts gender --seeds 0      # one run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from erasure_data import contrasts  # noqa: E402

from mechunlearn.directions import NoEvidenceWarning, leace, mean_diff  # noqa: E402
from mechunlearn.erasure import (  # noqa: E402
    WeightEdit,
    erasure_report,
    fit_erasure,
    fit_sites,
    plot_erasure,
)
from mechunlearn.interventions import Erase, Project  # noqa: E402
from mechunlearn.models import load_minilm  # noqa: E402
from mechunlearn.sites import resid  # noqa: E402


def edits_for(model, train, layer: int, n_layers: int, full: bool, rounds: int, qk: int):
    site = resid(layer, "post", "mean")
    later = [resid(i, "post", "mean") for i in range(layer, n_layers)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoEvidenceWarning)
        from mechunlearn.erasure import edited_features

        x = train[0] + train[1]
        X = edited_features(model, None, x, [site])[site]
        pos, neg = X[: len(train[0])], X[len(train[0]):]
        md = mean_diff(pos, neg, site=site, n_permutations=0)
        le = leace(pos, neg, site=site, n_permutations=0)
    tag = f"{layer}..{n_layers - 1}"
    out = {f"project@{layer}": Project(md), f"leace@{layer}": Erase(le),
           f"orth@{layer}": WeightEdit(md.basis), f"project@{tag}": fit_sites(model, train, later)}
    if full:
        out[f"leace@{tag}"] = fit_sites(model, train, later, finder="leace")
        fit = fit_erasure(model, train, later, max_rounds=rounds, quadratic_k=qk)
        out[f"iterative@{tag}"] = fit.edit
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contrasts", default="harm,gender,null")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quadratic-k", type=int, default=8)
    ap.add_argument("--n-neutral", type=int, default=100)
    ap.add_argument("--out", default=None, help="write OUT.csv and OUT_<contrast>.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_minilm()
    n_layers = int(model.cfg.n_layers)
    frames = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        data, neutral = contrasts(seed)
        for name in args.contrasts.split(","):
            t0 = time.perf_counter()
            train, test = data[name]
            full = name != "null"
            edits = edits_for(model, train, args.layer, n_layers, full, args.rounds, args.quadratic_k)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NoEvidenceWarning)
                df = erasure_report(model, edits, train, test, neutral=neutral[: args.n_neutral],
                                    seed=seed)
            df.insert(0, "contrast", name)
            df.insert(1, "seed", seed)
            df["evidence"] = df.attrs["evidence"]
            frames.append(df)
            print(f"# {name} seed {seed}: {len(train[0])}+{len(train[1])} train, "
                  f"{len(test[0])}+{len(test[1])} test, evidence={df.attrs['evidence']}, "
                  f"{time.perf_counter() - t0:.0f} s"
                  + ("  [NoEvidenceWarning]" if any(w.category is NoEvidenceWarning for w in caught) else ""),
                  flush=True)
            if args.out:  # after every run, so a long job leaves partial results
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                pd.concat(frames, ignore_index=True).to_csv(f"{args.out}.csv", index=False)
            if args.out and seed == 0:
                plot_erasure(df, title=f"{name}: probes after each edit (MiniLM, seed 0)",
                             save=f"{args.out}_{name}.png")
    res = pd.concat(frames, ignore_index=True)
    show = res[(res.layer >= args.layer) | (res.edit == "none")]
    table = show.groupby(["contrast", "edit", "layer"], sort=False).agg(
        linear=("linear_acc", "mean"), linear_max=("linear_acc", "max"),
        mlp=("mlp_acc", "mean"), mlp_max=("mlp_acc", "max"), dirs=("n_directions", "mean"),
        emb_dist=("emb_dist", "mean"), sim_spearman=("sim_spearman", "mean")).reset_index()
    print("| contrast | edit | layer | linear (mean/max over seeds) | MLP (mean/max) | dirs | "
          "1-cos | sim ρ |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        print(f"| {r.contrast} | {r.edit} | {r.layer} | {r.linear:.2f} / {r.linear_max:.2f} | "
              f"{r.mlp:.2f} / {r.mlp_max:.2f} | {r.dirs:.0f} | {r.emb_dist:.3f} | "
              f"{r.sim_spearman:.3f} |")


if __name__ == "__main__":
    main()
