"""Evaluate bias-direction finders on the toy world: find, project out, measure.

For every layer's residual stream (``blocks.L.hook_resid_post``) and every finder:

1. X+ = features of (borderline training prompt, the reinforced refusal), X− = features of
   (the same prompt, its unbiased helpful answer), read from the tuned model at the Site
   (``--position``, default ``response_mean``). Pairs are held out together (groups = prompt)
   for the held-out AUC and the permutation test. With ``--contrast models --position last``
   instead X+ = tuned-model and X− = SFT-model features of the borderline prompts alone at
   the decision token (the last prompt token, ``Assistant:``): what fine-tuning changed there.
2. Project the top direction out of the residual stream at every token (``Project`` via
   ``mechunlearn.apply``; for LEACE also its oblique ``Erase``), then measure on *held-out*
   borderline eval prompts the refusal (bias) rate and good-answer rate of greedy responses,
   and on ordinary eval prompts the KL(unedited || edited) per token and the change in
   log-likelihood (nats/token) of the reference good answers.
3. Direction recovery: cosine between the found direction and the borderline-specific shift
   of fine-tuning, Δ = mean_borderline(φ_tuned − φ_sft) − mean_ordinary(φ_tuned − φ_sft),
   with φ at the same Site on the same kind of inputs ((prompt, helpful answer) pairs, or the
   prompts alone with ``--contrast models``; there mean_diff is close to Δ by construction).

Controls: the unedited tuned model, the SFT model, and a random unit direction per layer.

    python scripts/eval_directions.py --world hard --out docs/directions_eval
    python scripts/eval_directions.py --world hard --contrast models --position last \\
        --out docs/directions_eval_decision
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mechunlearn import apply
from mechunlearn.directions import FINDERS, Directions
from mechunlearn.features import extract
from mechunlearn.interventions import Erase, Project
from mechunlearn.plots import plot_layers
from mechunlearn.sites import Site
from mechunlearn.toyworld import format_prompt, format_response, load
from mechunlearn.toyworld import metrics as M
from mechunlearn.toyworld.format import encode_pairs


def pairs_for(prompts: list[str], responses: list[str]) -> list[tuple[str, str]]:
    """(formatted prompt, formatted response) pairs, the world's text convention."""
    return [(format_prompt(p), format_response(r)) for p, r in zip(prompts, responses)]


def log_probs(model, tb) -> torch.Tensor:
    """Next-token log-probabilities ``[n, pos, vocab]`` through the bridge (hooks fire)."""
    with torch.no_grad():
        return torch.log_softmax(M.logits(model, tb.input_ids, tb.attention_mask), -1)


def outcome(model, world, ordinary, tb, ref_logp, ref_lp, max_new: int) -> dict[str, float]:
    """Bias / good rates on held-out borderline prompts (greedy); on ordinary prompts with
    their good answers: KL(reference || model) per token and Δ log-lik (nats/token)."""
    border = list(world.eval["borderline"])
    # every edit here acts on all positions alike (Project/Erase, positions="all"), so
    # KV-cache decoding through the bridge gives the same tokens as re-running the sequence
    rs = M.generate(model, border, max_new_tokens=max_new, kv_cache=True)
    lp = M.response_logprob(model, ordinary, [p.good for p in ordinary], reduction="mean")
    lg = log_probs(model, tb)
    m = tb.attention_mask.float()
    kl = float(((ref_logp.exp() * (ref_logp - lg)).sum(-1) * m).sum() / m.sum())
    return {
        "bias_rate": M.bias_rate(model, border, rs),
        "borderline_good": M.good_answer_rate(model, border, rs),
        "borderline_bad": M.bad_response_rate(model, border, rs),
        "kl": kl,
        "ordinary_logprob": float(lp.mean()),
        "delta_logprob": float((lp - ref_lp).mean()),
        "example": rs[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="hard")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--position", default="response_mean")
    ap.add_argument("--contrast", choices=("responses", "models"), default="responses",
                    help="responses: X+ = (prompt, refusal), X- = (prompt, helpful answer), "
                    "tuned model. models: X+ = tuned, X- = SFT model features of the borderline "
                    "prompts alone at the decision token (use --position last).")
    ap.add_argument("--methods", default="pca_bias,mean_diff,probe,ccs,leace")
    ap.add_argument("--n-permutations", type=int, default=49)
    ap.add_argument("--n-splits", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default="docs/directions_eval")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    world = load(args.world, cache_dir=args.cache_dir, progress=True)
    model, sft = world.model, world.sft_model
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    bias_ids = set(world.truth.bias_ids)
    border_train = [p for p in world.train if p.id in bias_ids]
    prompts = [p.prompt for p in border_train]
    refusals = [p.chosen for p in border_train]
    helpful = [world.truth.unbiased_responses.get(p.id, p.good) for p in border_train]
    ordinary_train = [p for p in world.train if p.category == "ordinary"][: len(border_train)]
    ordinary = list(world.eval["ordinary"])
    pair_groups = np.r_[np.arange(len(prompts)), np.arange(len(prompts))]
    position = int(args.position) if args.position.lstrip("-").isdigit() else args.position
    site_list = [Site(f"blocks.{i}.hook_resid_post", position) for i in range(n_layers)]
    print(f"{len(border_train)} biased borderline pairs, {n_layers} layers, d={d_model}",
          flush=True)

    def feats(m, ps, rs):
        data = pairs_for(ps, rs) if args.contrast == "responses" else [format_prompt(p) for p in ps]
        return extract(m, data, site_list, batch_size=64)

    o_prompts, o_resp = [p.prompt for p in ordinary_train], [p.good for p in ordinary_train]
    tb_, sb = feats(model, prompts, helpful), feats(sft, prompts, helpful)
    if args.contrast == "responses":
        f_pos, f_neg = feats(model, prompts, refusals), tb_
    else:
        f_pos, f_neg = tb_, sb
    to, so = feats(model, o_prompts, o_resp), feats(sft, o_prompts, o_resp)
    shift = {s: ((tb_[s].values - sb[s].values).mean(0)
                 - (to[s].values - so[s].values).mean(0)).double().numpy() for s in site_list}

    tb = encode_pairs(world.tokenizer, [p.prompt for p in ordinary], [p.good for p in ordinary])
    ref_logp = log_probs(model, tb)
    ref_lp = M.response_logprob(model, ordinary, [p.good for p in ordinary], reduction="mean")
    rows = [{"method": "none (tuned)", "layer": -1,
             **outcome(model, world, ordinary, tb, ref_logp, ref_lp, args.max_new_tokens)},
            {"method": "sft model", "layer": -1,
             **outcome(sft, world, ordinary, tb, ref_logp, ref_lp, args.max_new_tokens)}]
    base = rows[0]
    for r in rows:
        print({k: v for k, v in r.items()}, flush=True)
    rng = np.random.default_rng(0)
    for s in site_list:
        gt = shift[s] / np.linalg.norm(shift[s])
        todo: list[tuple[str, Directions | None, object, float]] = []
        for name in args.methods.split(","):
            t0 = time.perf_counter()
            kw = dict(n_splits=args.n_splits, n_permutations=args.n_permutations, seed=0)
            if name == "ccs":  # pairs are the samples; costly, so fewer permutations
                kw["n_permutations"] = min(args.n_permutations, 19)
                d = FINDERS[name](f_pos[s], f_neg[s], groups=np.arange(len(prompts)), **kw)
            else:
                d = FINDERS[name](f_pos[s], f_neg[s], groups=pair_groups, **kw)
            fit_s = time.perf_counter() - t0
            todo.append((name, d, Project(d, positions="all"), fit_s))
            if name == "leace":
                todo.append(("leace_erase", d, Erase(d, positions="all"), fit_s))
        v = rng.normal(size=d_model)
        todo.append(("random", None, Project(torch.tensor(v), s, positions="all"), 0.0))
        for name, d, iv, fit_s in todo:
            with apply(model, iv):
                out = outcome(model, world, ordinary, tb, ref_logp, ref_lp, args.max_new_tokens)
            dirv = d.direction.double().numpy() if d is not None else v / np.linalg.norm(v)
            row = {"method": name, "layer": s.layer, "site": s.key, **out,
                   "delta_bias_rate": out["bias_rate"] - base["bias_rate"],
                   "cos_shift": float(dirv @ gt), "fit_seconds": fit_s}
            if d is not None:
                row.update({k: d.scores[k] for k in ("heldout_auc", "p_value", "null_auc_q05",
                                                     "null_auc_q95")})
                row["train_auc"] = d.scores["train_auc"][0]
                row["significant"] = d.significant
            rows.append(row)
            print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in row.items()},
                  flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    plot_layers(df[df["layer"] >= 0], ["bias_rate", "kl", "delta_logprob", "cos_shift",
                                       "heldout_auc"],
                null=("null_auc_q05", "null_auc_q95"),
                title=f"toy world {args.world!r}: bias direction projected out of resid_post "
                f"(fitted at {args.position}, contrast {args.contrast})", save=out.with_suffix(".png"), figsize=(19, 3.6))
    print(f"wrote {out.with_suffix('.csv')} and .png in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
