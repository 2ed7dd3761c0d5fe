"""Compare activation projection, weight orthogonalisation and unlearning on a toy world.

    python scripts/compare_edits.py --world hard [--cache-dir DIR] [--methods a,b] [--out docs]

Writes ``<out>/unlearning_<world>.csv`` (one row per method + tuned/gold references) and
``<out>/unlearning_<world>.png``, prints the table, the weight-vs-activation parity on the
world's tuned model, and the targets of issue 9 (gap closed, good-answer ratio, KL ratio,
time ratio vs the gold retrain).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pandas as pd
import torch


def _atomic(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=d)
    os.close(fd)
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def parity(model, n: int = 8, k: int = 2, seed: int = 0) -> float:
    """max |logits(weight-orthogonalised) - logits(activation-projected)| on random tokens."""
    from mechunlearn.hooks import add_hooks
    from mechunlearn.weights import as_basis, orthogonalize_, project_out, writer_hooks

    g = torch.Generator().manual_seed(seed)
    d = int(model.cfg.d_model)
    basis = as_basis(torch.randn(k, d, generator=g), d)
    ids = torch.randint(3, int(model.cfg.d_vocab), (n, 24), generator=g)
    am = torch.ones_like(ids)
    with torch.no_grad():
        h = add_hooks(model, [(x, lambda a: project_out(a, basis)) for x in writer_hooks(model)])
        try:
            act = model(ids, attention_mask=am)
        finally:
            h.remove()
        with orthogonalize_(model, basis):
            w = model(ids, attention_mask=am)
    return float((w - act).abs().max())


def plot(df: pd.DataFrame, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("trigger_bad", "trigger bad-response rate"),
            ("trigger_good", "trigger good-answer rate"),
            ("kl_gold_ordinary", "KL to gold, ordinary prompts (nats/token)"),
            ("seconds", "seconds (edit/unlearning)")]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 4.2))
    for ax, (c, label) in zip(axes, cols):
        colors = ["0.5" if m in ("tuned", "gold") else "C0" for m in df["method"]]
        ax.barh(df["method"], df[c], color=colors)
        ax.set_title(label, fontsize=9)
        ax.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", default="hard", choices=["tiny", "easy", "hard"])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--methods", default=None)
    ap.add_argument("--objective", default="flip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mechunlearn import toyworld
    from mechunlearn.studies.compare_edits import METHODS, CompareConfig, compare

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    t0 = time.perf_counter()
    world = toyworld.load(args.world, cache_dir=args.cache_dir, progress=False)
    print(f"world {args.world} loaded in {time.perf_counter() - t0:.0f}s; timings {world.timings}")
    print(f"parity max|dlogit| (weights vs activation projection) on the tuned model: "
          f"{parity(world.model):.3g}")
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    cfg = CompareConfig(methods=methods, objective=args.objective)
    df = compare(world, cfg, progress=lambda s: print(f"[compare] {s}", flush=True))
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"unlearning_{args.world}")
    _atomic(stem + ".csv", lambda p: df.to_csv(p, index=False))
    plot(df, stem + ".png", f"toy world '{args.world}': edits and unlearning")
    show = [c for c in ("method", "trigger_bad", "gap_closed", "trigger_good", "ordinary_good",
                        "bias", "good_logp", "kl_ordinary_tuned", "kl_gold_trigger",
                        "kl_gold_ordinary", "seconds", "attribution_seconds", "n_forget",
                        "steps", "stopped") if c in df.columns]
    print(df[show].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    ref = df.set_index("method")
    gold_s = float(ref.loc["gold", "seconds"])
    out = {}
    for m in df["method"]:
        if m in ("tuned", "gold"):
            continue
        r = ref.loc[m]
        att = 0.0 if m == "activation_projection" else float(r.get("attribution_seconds", 0) or 0)
        out[m] = {
            "gap_closed": round(float(r["gap_closed"]), 3),
            "good_ratio_vs_gold": round(float(r["trigger_good"] / max(ref.loc["gold", "trigger_good"], 1e-9)), 3),
            "kl_gold_ord_ratio_vs_tuned": round(float(r["kl_gold_ordinary"] / ref.loc["tuned", "kl_gold_ordinary"]), 3),
            "time_ratio_vs_gold": round((float(r["seconds"]) + att) / gold_s, 3) if gold_s else None,
        }
    print("targets (>=0.95, >=0.9, <=1.2, <=0.1):")
    print(json.dumps(out, indent=1))
    print("examples (first trigger prompts, greedy):")
    for m, ex in zip(df["method"], df["examples"]):
        print(f"  {m:>22}: {ex[:160]}")
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
