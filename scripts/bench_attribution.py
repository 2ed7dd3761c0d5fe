"""Benchmark: convex attribution time per query vs N, beside brute-force NNLS over all N.

Synthetic features (d=384 by default): training rows are Gaussian around 50 cluster centres;
each query is a random convex combination of 5 training rows plus 5 % noise. For every N we
print the mean time per query of ``ConvexAttributor`` (index built once, not timed per query)
and of scipy's ``nnls`` on the sum-to-one-augmented system over *all* N rows (the brute-force
simplex least squares), their ratio, and both relative residuals (brute force is the global
optimum with unlimited support, so its residual is a lower bound on ours).

    python scripts/bench_attribution.py [--d 384] [--queries 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.optimize import nnls

from mechunlearn.attribution import ConvexAttributor


def make_data(n: int, d: int, n_q: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered training features ``[n, d]`` and near-convex queries ``[n_q, d]``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(50, d, generator=g) * 3
    X = centres[torch.randint(0, 50, (n,), generator=g)] + torch.randn(n, d, generator=g)
    Q = []
    for _ in range(n_q):
        idx = torch.randint(0, n, (5,), generator=g)
        w = torch.rand(5, generator=g)
        w = w / w.sum()
        q = w @ X[idx]
        Q.append(q + 0.05 * q.norm() / d**0.5 * torch.randn(d, generator=g))
    return X, torch.stack(Q)


def brute_nnls(X: np.ndarray, q: np.ndarray, lam: float = 1e3) -> float:
    """Relative residual of NNLS over all rows with a heavily weighted sum-to-one row."""
    n = X.shape[0]
    A = np.vstack([X.T, lam * np.ones((1, n))])
    w, _ = nnls(A, np.concatenate([q, [lam]]), maxiter=50 * n)
    return float(np.linalg.norm(q - X.T @ w) / np.linalg.norm(q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--brute-queries", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--brute-max-seconds", type=float, default=60.0,
                    help="skip brute force at larger N once one solve took longer than this")
    ap.add_argument("--sizes", type=str, default="1000,3000,10000,30000,100000")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"d={args.d} k={args.k} pool={args.pool} threads={args.threads} "
          f"queries={args.queries} (brute force: {args.brute_queries} per N); "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'N':>7} {'convex ms/q':>12} {'p95 ms':>8} {'resid':>7} {'brute ms/q':>11} "
          f"{'resid':>7} {'brute/convex':>12}")
    brute_ok = True
    for n in sizes:
        X, Q = make_data(n, args.d, args.queries)
        att = ConvexAttributor(X, k=args.k, pool=args.pool, center=False)
        att.attribute(Q[0])  # warm-up
        times, res = [], []
        for q in Q:
            t0 = time.perf_counter()
            a = att.attribute(q)
            times.append(time.perf_counter() - t0)
            res.append(a.residual)
        ms = 1e3 * float(np.mean(times))
        p95 = 1e3 * float(np.percentile(times, 95))
        line = f"{n:>7} {ms:>12.1f} {p95:>8.1f} {np.mean(res):>7.4f}"
        if brute_ok:
            Xn, bt, br = X.double().numpy(), [], []
            for q in Q[: args.brute_queries]:
                t0 = time.perf_counter()
                br.append(brute_nnls(Xn, q.double().numpy()))
                bt.append(time.perf_counter() - t0)
            bms = 1e3 * float(np.mean(bt))
            line += f" {bms:>11.1f} {np.mean(br):>7.4f} {bms / ms:>11.0f}x"
            brute_ok = max(bt) < args.brute_max_seconds
        else:
            line += f" {'skipped':>11} {'-':>7} {'-':>12}"
        print(line + f"  (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
