"""Benchmark: convex attribution time per query vs N, beside the floor and brute-force NNLS.

Synthetic features (d=384 by default): training rows are Gaussian around 50 cluster centres;
each query is a random convex combination of 5 training rows plus 5 % noise. For every N we
print, measured side by side in one run (the machine may be shared: read the ratios):

* the **floor**: one float32 matrix-vector product with the training matrix per query (any
  method that looks at every training row once costs at least this);
* ``ConvexAttributor.attribute`` per query (index built once, not timed) and its ratio to
  the floor;
* ``ConvexAttributor.attribute_many`` on all queries (passes over the training set shared by
  a block of queries), per query, and its ratio to the floor;
* scipy's ``nnls`` on the sum-to-one-augmented system over *all* N rows (the brute-force
  simplex least squares) for small N, and both relative residuals (brute force is the global
  optimum with unlimited support, so its residual is a lower bound on ours).

    python scripts/bench_attribution.py [--sizes 1000,10000,100000] [--queries 32] [--threads 1]
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


def floor_ms(X: torch.Tensor, Q: torch.Tensor, reps: int = 3) -> float:
    """The floor: one float32 matrix-vector pass over the training matrix, ms per query."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for q in Q:
            X @ q
        best = min(best, (time.perf_counter() - t0) / len(Q))
    return 1e3 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--brute-queries", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--brute-max-n", type=int, default=10000,
                    help="run brute-force NNLS only up to this N (it grows ~N^2)")
    ap.add_argument("--sizes", type=str, default="1000,10000,100000")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"d={args.d} k={args.k} pool={args.pool} threads={args.threads} "
          f"queries={args.queries} (brute force: {args.brute_queries} per N <= "
          f"{args.brute_max_n}); load average at start {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print("floor = one float32 matrix-vector pass over the training matrix per query; "
          "single = attribute() per query; blocked = attribute_many() / queries")
    print(f"{'N':>7} {'floor ms':>9} {'single ms':>10} {'x floor':>8} {'blocked ms':>11} "
          f"{'x floor':>8} {'p95 single':>11} {'resid':>7} {'brute ms':>9} {'resid':>7}")
    for n in sizes:
        X, Q = make_data(n, args.d, args.queries)
        att = ConvexAttributor(X, k=args.k, pool=args.pool, center=False)
        att.attribute(Q[0])  # warm-up
        att.attribute_many(Q[:2])  # warm-up + the blocked path's first-use self-check
        fl = floor_ms(X, Q)
        times, res = [], []
        for q in Q:
            t0 = time.perf_counter()
            a = att.attribute(q)
            times.append(time.perf_counter() - t0)
            res.append(a.residual)
        t0 = time.perf_counter()
        many = att.attribute_many(Q)
        blocked = 1e3 * (time.perf_counter() - t0) / len(Q)
        if max(abs(a.residual - r) for a, r in zip(many, res)) > 1e-6:
            print("  warning: blocked and single residuals differ by more than 1e-6")
        fl = min(fl, floor_ms(X, Q))  # floor measured before and after: the less loaded one
        ms = 1e3 * float(np.mean(times))
        p95 = 1e3 * float(np.percentile(times, 95))
        line = (f"{n:>7} {fl:>9.2f} {ms:>10.1f} {ms / fl:>7.1f}x {blocked:>11.1f} "
                f"{blocked / fl:>7.1f}x {p95:>11.1f} {np.mean(res):>7.4f}")
        if n <= args.brute_max_n and args.brute_queries > 0:
            Xn, bt, br = X.double().numpy(), [], []
            for q in Q[: args.brute_queries]:
                t0 = time.perf_counter()
                br.append(brute_nnls(Xn, q.double().numpy()))
                bt.append(time.perf_counter() - t0)
            line += f" {1e3 * float(np.mean(bt)):>9.1f} {np.mean(br):>7.4f}"
        else:
            line += f" {'skipped':>9} {'-':>7}"
        print(line + f"  (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
