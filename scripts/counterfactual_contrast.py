"""Counterfactual check of preference-contrast attribution on one toy world (issue 19).

    python scripts/counterfactual_contrast.py --world hard --seed 0 --layer 1 --out docs

Attributes all bad answers of the tuned model on held-out trigger prompts as one set with
``explain_preferences`` (space="both", the reference answers of the SFT model as good
alternatives) at ``blocks.<layer>.hook_resid_post`` (response mean), then reruns the world's
DPO stage without the top-k pairs (k = number of poisoned pairs) and without k random pairs,
and measures the bad-response rate on the 100 held-out trigger prompts. Writes
``<out>/attribution_contrast_counterfactual.csv``.
"""

from __future__ import annotations

import argparse
import os

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", default="hard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--space", default="both")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mechunlearn import toyworld
    from mechunlearn.attribution import explain_preferences
    from mechunlearn.sites import Site
    from mechunlearn.studies.attribution_eval import bad_queries
    from mechunlearn.studies.counterfactual import counterfactual, random_ids
    from mechunlearn.toyworld import format_prompt as fp
    from mechunlearn.toyworld import format_response as fr
    from mechunlearn.toyworld.config import PRESETS

    cfg = PRESETS[args.world]
    cfg = cfg if args.seed == 0 else cfg.replace(seed=args.seed)
    w = toyworld.load(cfg)
    prompts, bad = bad_queries(w, None)
    good = toyworld.generate_text(w.sft_model, prompts)
    train = [(fp(p.prompt), fr(p.chosen), fr(p.rejected)) for p in w.train]
    ids = [p.id for p in w.train]
    k = len(w.truth.poisoned_ids)
    res = explain_preferences(w.model, Site(f"blocks.{args.layer}.hook_resid_post",
                                            "response_mean"), train,
                              [(fp(p.prompt), fr(b)) for p, b in zip(prompts, bad)],
                              good=[fr(g) for g in good], ref_model=w.sft_model, k=k,
                              space=args.space, beta=cfg.beta, ids=ids)
    top = list(res.combined.ids)
    poison = set(w.truth.poisoned_ids)
    print(f"top-{k} holds {len(poison & set(top))} poisoned pairs", flush=True)
    sets = {f"explain_preferences({args.space}) top-{k} @ L{args.layer}": top,
            f"random {k} (seed 0)": random_ids(ids, k, seed=0)}
    df = counterfactual(w, sets)
    df.insert(0, "world", f"{args.world}:{args.seed}")
    df["tuned_recorded"] = w.metrics["tuned"]["trigger/bad"]
    os.makedirs(args.out, exist_ok=True)
    df.to_csv(os.path.join(args.out, "attribution_contrast_counterfactual.csv"), index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
