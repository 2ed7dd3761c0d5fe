"""Counterfactual check of preference attribution on one toy world (issue 19).

    python scripts/counterfactual_contrast.py --world hard --seed 0 --space parameters \
        --pool auto --features-cache ~/.cache/mechunlearn/param_grads \
        --csv docs/attribution_params_counterfactual.csv

Attributes all bad answers of the tuned model on held-out trigger prompts as one set with
``explain_preferences`` (the SFT model's greedy answers as good alternatives; ``--space
parameters``: DPO-loss parameter gradients, no Site; ``both``/``activations``/``gradients``:
at ``blocks.<layer>.hook_resid_post``, response mean; ``--pool``: neighbour pooling of the
per-query scores), then reruns the world's DPO stage without the top-k pairs (k = number of
poisoned pairs) and without k random pairs, and measures the bad-response rate on the 100
held-out trigger prompts. With ``--features-cache`` and ``--space parameters`` the gradients
written by ``scripts/eval_attribution_params.py`` are reused (the same computation as
``explain_preferences(space="parameters")``: centred cosines of count-sketched gradients).
"""

from __future__ import annotations

import argparse
import os

import torch


def _set_ranking_from_cache(path: str, pool: str | None, k: int, ids: list[str]) -> list[str]:
    from mechunlearn.attribution.pooling import choose_pooling, pool_scores

    d = torch.load(path)
    G, Q = d["train"].double(), d["query"].double()
    mu = G.mean(0)  # centred cosine, as GradSim(center=True) in explain_preferences
    A, B = G - mu, Q - mu
    S = (B / B.norm(dim=1, keepdim=True)) @ (A / A.norm(dim=1, keepdim=True)).T
    if pool == "auto":
        ch = choose_pooling(S)
        S = ch.scores
        print(f"pooled with k={ch.k} (auto)", flush=True)
    elif pool is not None:
        S = pool_scores(S, int(pool))
    order = torch.argsort(-S.mean(0), stable=True)[:k]
    return [ids[int(i)] for i in order]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", default="hard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--space", default="parameters")
    ap.add_argument("--pool", default=None, help="None, an int k, or 'auto'")
    ap.add_argument("--features-cache", default=None)
    ap.add_argument("--csv", default="docs/attribution_params_counterfactual.csv")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mechunlearn import toyworld
    from mechunlearn.atomic import atomic_write
    from mechunlearn.attribution import explain_preferences
    from mechunlearn.outputs import check_output_file
    from mechunlearn.sites import Site
    from mechunlearn.studies.attribution_eval import bad_queries
    from mechunlearn.studies.counterfactual import counterfactual, random_ids
    from mechunlearn.toyworld import format_prompt as fp
    from mechunlearn.toyworld import format_response as fr
    from mechunlearn.toyworld.config import PRESETS

    out = check_output_file(args.csv, overwrite=args.overwrite, suffixes=[".csv"])
    pool = None if args.pool in (None, "None") else ("auto" if args.pool == "auto"
                                                    else int(args.pool))
    cfg = PRESETS[args.world]
    cfg = cfg if args.seed == 0 else cfg.replace(seed=args.seed)
    w = toyworld.load(cfg)
    ids = [p.id for p in w.train]
    k = len(w.truth.poisoned_ids)
    cached = (os.path.join(os.path.expanduser(args.features_cache),
                           f"dpo_param_grads_{args.world}_s{args.seed}_p4096.pt")
              if args.features_cache else None)
    if args.space == "parameters" and cached and os.path.exists(cached):
        top = _set_ranking_from_cache(cached, pool, k, ids)
    else:
        prompts, bad = bad_queries(w, None)
        good = toyworld.generate_text(w.sft_model, prompts)
        train = [(fp(p.prompt), fr(p.chosen), fr(p.rejected)) for p in w.train]
        site = Site(f"blocks.{args.layer}.hook_resid_post", "response_mean")
        res = explain_preferences(w.model, site, train,
                                  [(fp(p.prompt), fr(b)) for p, b in zip(prompts, bad)],
                                  good=[fr(g) for g in good], ref_model=w.sft_model, k=k,
                                  space=args.space, beta=cfg.beta, ids=ids, pool=pool)
        top = list(res.combined.ids)
    poison = set(w.truth.poisoned_ids)
    print(f"top-{k} holds {len(poison & set(top))} poisoned pairs", flush=True)
    where = "" if args.space == "parameters" else f" @ L{args.layer}"
    sets = {f"explain_preferences({args.space}, pool={args.pool}) top-{k}{where}": top,
            f"random {k} (seed 0)": random_ids(ids, k, seed=0)}
    df = counterfactual(w, sets)
    df.insert(0, "world", f"{args.world}:{args.seed}")
    df["tuned_recorded"] = w.metrics["tuned"]["trigger/bad"]
    atomic_write(out, lambda p: df.to_csv(p, index=False))
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
