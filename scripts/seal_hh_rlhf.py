"""SEAL diagnostics of a MiniLM reward model on the hh-rlhf harmless-base sample.

Runs everything offline and prints the figures:

1. load the pairs (malformed records skipped and reported), split 80/20 by content hash;
2. features of chosen/rejected responses at every layer's resid_post with three poolings
   (mean over tokens, mean over response tokens, [CLS]) in one pass, cached in FeatureStores;
3. head-only Bradley-Terry reward model per candidate Site; the Site with the best
   cross-validated *training* accuracy becomes the RM (test accuracy is only reported);
4. alignment resistance before (random head) and after training, overall and per feature;
5. feature imprint of rule/lexicon labelers and a probe labeler, with bootstrap CIs;
6. alignment robustness: text perturbations, and a layer sweep projecting out / steering
   along the refusal direction (difference of means of refusal-labelled responses);
7. a report folder (CSV tables, plots, summary.md).

Usage: ``python scripts/seal_hh_rlhf.py --data PATH --out FOLDER [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="seal_report")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/mechunlearn/seal"))
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text-n", type=int, default=300, help="test pairs for text robustness")
    ap.add_argument("--sweep-n", type=int, default=100, help="test pairs for the layer sweep")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mechunlearn.seal.run import run_seal

    run = run_seal(args.data, args.out, cache=args.cache, max_length=args.max_length,
                   text_n=args.text_n, sweep_n=args.sweep_n, n_boot=args.boot, seed=args.seed)
    report, out = run.report, run.folder
    res, by_feat, imprint = report.resistance, report.resistance_by_feature, report.imprint
    text_rob, sweep, info = report.text_robustness, report.activation_robustness, report.info
    print("\nsite / pooling comparison (head-only BT, l2 by 5-fold CV on train):")
    print(run.sites.round(3).to_string(index=False))
    print("\nalignment resistance:")
    for k, r in res.items():
        print(f"  {k:30s} n={r.n:5d} agreement={r.agreement:.3f} resistance={r.resistance:.3f}")
    print("\nresistance by feature (rejected has more of the feature / chosen has more):")
    piv = by_feat.pivot(index="feature", columns="group", values="resistance").round(3)
    print(piv.to_string())
    print("\nfeature imprint on RM score (coef per SD; 0/1 features raw), 95% bootstrap CI:")
    imp = imprint[imprint["feature"] != "(intercept)"]
    for target in ("score", "reward_diff"):
        t_ = imp[imp["target"] == target].sort_values("coef", key=abs, ascending=False)
        print(f" target={target}")
        print(t_[["feature", "kind", "coef", "ci_low", "ci_high", "p_boot"]].round(3)
              .to_string(index=False))
    print("\ntext robustness:")
    print(text_rob.round(3).to_string(index=False))
    print("\nactivation robustness (refusal direction, per layer):")
    print(sweep.round(3).to_string(index=False))
    print(f"\ntimes (s): {json.dumps(info['seconds'])}")
    print(f"report written to {out}")



if __name__ == "__main__":
    main()
