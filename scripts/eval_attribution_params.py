"""DPO-loss parameter-gradient attribution on the hard toy worlds (issue 19), with pooling.

    python scripts/eval_attribution_params.py --worlds hard:0,hard:1,hard:2 --out docs \
        --features-cache ~/.cache/mechunlearn/param_grads

For every world: the bad answers of the tuned model on held-out trigger prompts (queries) and
all training pairs get the gradient of their DPO loss (query: "bad preferred over the SFT
model's greedy answer"; reference model = SFT) w.r.t. every trainable parameter,
count-sketched to ``--dim`` dims (``gradient_features(params=..., projection_dim=...)``, the
computation of ``explain_preferences(space="parameters")``). Normalisations compared:

* ``dot`` (TracIn's dot product), ``cos`` (cosine), ``cos_centered`` (training mean removed;
  the library default);
* ``whitened`` (centred, then ``(G^T G / N + lambda tr/d I)^(-1/2)``, the damped Gauss-Newton /
  TRAK inverse-Gram term, ridge ``lambda`` 1e-2 and 1);
* ``cos_centered@1024`` (the same sketch folded to 1,024 dims: sensitivity to the sketch size);
* ``train_grad_norm`` (the training gradient's norm alone, the same for every query: the
  query-independent part of ``dot``);

each per query and pooled with its neighbours (``+pool``, k chosen by
``attribution.pooling.choose_pooling``). Ground-truth-free criteria reported per row:
split-half stability of the set ranking (top 32) and the leave-one-out pooling gain at the
chosen k. Metrics as in ``eval_attribution_contrast.py``.

Writes ``<out>/attribution_params_<preset>_s<seed>.csv`` and ``<out>/<--summary>`` (default
``attribution_params_summary.csv``; refused if they exist, unless ``--overwrite``).
``--features-cache DIR`` keeps the gradients (``dpo_param_grads_<preset>_s<seed>_p<dim>.pt``)
so a rerun costs seconds. ``--checkpoint sft`` takes the gradients at the SFT (reference)
model instead of the tuned one (file names get ``_sft``).
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch


def grads(preset: str, seed: int, dim: int, cache: str | None, checkpoint: str = "tuned") -> dict:
    """DPO parameter gradients of training pairs and bad queries (cached in ``cache``)."""
    from mechunlearn import toyworld
    from mechunlearn.atomic import atomic_write
    from mechunlearn.attribution import gradient_features
    from mechunlearn.studies.attribution_eval import bad_queries
    from mechunlearn.toyworld import format_prompt as fp
    from mechunlearn.toyworld import format_response as fr
    from mechunlearn.toyworld.config import PRESETS

    path = (os.path.join(os.path.expanduser(cache), f"dpo_param_grads_{preset}_s{seed}_p{dim}{_tag(checkpoint)}.pt")
            if cache else None)
    if path and os.path.exists(path):
        return torch.load(path)
    cfg = PRESETS[preset] if seed == 0 else PRESETS[preset].replace(seed=seed)
    w = toyworld.load(cfg, threads=1)
    qp, bad = bad_queries(w, None)
    good = toyworld.generate_text(w.sft_model, qp)
    at = w.model if checkpoint == "tuned" else w.sft_model  # where the gradients are taken
    names = [n for n, p in at.named_parameters() if p.requires_grad]
    kw = dict(loss="dpo", ref_model=w.sft_model, beta=cfg.beta, params=names,
              projection_dim=dim)
    tr = [(fp(p.prompt), fr(p.chosen), fr(p.rejected)) for p in w.train]
    q = [(fp(p.prompt), fr(b), fr(g)) for p, b, g in zip(qp, bad, good)]
    out = {"train": gradient_features(at, tr, **kw).values,
           "query": gradient_features(at, q, **kw).values,
           "poisoned": torch.tensor([p.poisoned for p in w.train]),
           "prompts": [p.prompt for p in qp]}
    if path:
        atomic_write(path, lambda p: torch.save(out, p))
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


def score_variants(G: torch.Tensor, Q: torch.Tensor) -> dict[str, torch.Tensor]:
    """{normalisation: [n_queries, N] scores} (float64)."""
    G, Q = G.double(), Q.double()
    mu = G.mean(0)
    out = {"dot": Q @ G.T, "cos": _unit(Q) @ _unit(G).T,
           "cos_centered": _unit(Q - mu) @ _unit(G - mu).T}
    A, B = G - mu, Q - mu
    C = A.T @ A / len(A)
    evals, evecs = torch.linalg.eigh(C)
    for lam in (1e-2, 1.0):
        w = evecs * (evals.clamp_min(0) + lam * evals.clamp_min(0).mean()).rsqrt()
        out[f"whitened{lam:g}"] = _unit(B @ w) @ _unit(A @ w).T
    # a query-independent score: the training gradient's norm (what dot products inherit)
    out["train_grad_norm"] = G.norm(dim=1).expand(len(Q), -1).clone()
    fold = 1024
    if G.shape[1] > fold and G.shape[1] % fold == 0:  # a count sketch folded mod 1024
        gf = G.view(len(G), -1, fold).sum(1)
        qf = Q.view(len(Q), -1, fold).sum(1)
        out[f"cos_centered@{fold}"] = _unit(qf - gf.mean(0)) @ _unit(gf - gf.mean(0)).T
    return out


def _tag(checkpoint: str) -> str:
    return "" if checkpoint == "tuned" else f"_{checkpoint}"


def evaluate(preset: str, seed: int, dim: int, cache: str | None, checkpoint: str = "tuned"
             ) -> pd.DataFrame:
    from mechunlearn.attribution.pooling import choose_pooling
    from mechunlearn.attribution.selection import split_half_stability
    from mechunlearn.studies.attribution_eval import ranking_metrics

    t0 = time.perf_counter()
    d = grads(preset, seed, dim, cache, checkpoint)
    pos = d["poisoned"].bool()
    n = int(pos.sum())
    rows = []
    for name, S in score_variants(d["train"], d["query"]).items():
        pc = choose_pooling(S)
        variants = ((name, S),) if name == "train_grad_norm" else ((name, S),
                                                                   (f"{name}+pool", pc.scores))
        for variant, M in variants:
            per = [ranking_metrics(s, pos, [10, n]) for s in M]
            st = ranking_metrics(M.mean(0), pos, [n])
            rows.append({"world": f"{preset}:{seed}", "method": f"param_dpo_{variant}",
                         "auc": sum(p["auc"] for p in per) / len(per),
                         "p@10": sum(p["p@10"] for p in per) / len(per),
                         "p@n": sum(p[f"p@{n}"] for p in per) / len(per),
                         "set_auc": st["auc"], "set_p@n": st[f"p@{n}"],
                         "stability": split_half_stability(M.float(), m=32),
                         "pool_k": pc.k if variant.endswith("+pool") else 0,
                         "loo_gain": pc.gains[pc.k], "n_queries": len(S), "dim": dim})
    norm = d["train"].double().norm(dim=1)
    print(f"[{preset}:{seed}] {len(d['prompts'])} queries, {time.perf_counter() - t0:.0f}s; "
          f"mean gradient norm poisoned {float(norm[pos].mean()):.3f}, others "
          f"{float(norm[~pos].mean()):.3f}", flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worlds", default="hard:0,hard:1,hard:2")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--features-cache", default=None)
    ap.add_argument("--summary", default="attribution_params_summary.csv",
                    help="file name of the summary in --out")
    ap.add_argument("--checkpoint", choices=("tuned", "sft"), default="tuned",
                    help="model whose DPO-loss gradients are taken (sft: the reference model, "
                         "where no pair is learned yet; the query's bad answer still comes "
                         "from the tuned model)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mechunlearn.atomic import atomic_write
    from mechunlearn.outputs import check_output_file

    specs = [s.split(":") if ":" in s else (s, "0") for s in args.worlds.split(",")]
    paths = [check_output_file(os.path.join(args.out, f"attribution_params{_tag(args.checkpoint)}_{p}_s{s}.csv"),
                               overwrite=args.overwrite) for p, s in specs]
    summary = check_output_file(os.path.join(args.out, args.summary), overwrite=args.overwrite,
                                suffixes=[".csv"])
    pd.set_option("display.width", 250)
    frames = []
    for (preset, seed), path in zip(specs, paths):
        df = evaluate(preset, int(seed), args.dim, args.features_cache, args.checkpoint)
        atomic_write(path, lambda p, df=df: df.to_csv(p, index=False))
        print(df.drop(columns=["world", "dim"]).round(3).to_string(index=False), flush=True)
        frames.append(df)
    allw = pd.concat(frames, ignore_index=True)
    agg = allw.groupby("method", sort=False)[["auc", "p@10", "p@n", "set_auc", "set_p@n",
                                              "stability", "loo_gain", "pool_k"]]
    table = agg.mean().add_suffix("_mean").join(agg.std().add_suffix("_sd")).reset_index()
    atomic_write(summary, lambda p: table.to_csv(p, index=False))
    print("\nmean / sd over worlds:")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
