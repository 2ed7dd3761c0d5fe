"""Passes over the training matrix for the convex decomposition, many queries per pass.

The convex solver (:mod:`mechunlearn.attribution.convex`) touches the whole training set only
to (1) pick each query's nearest-neighbour candidate pool and (2) *price*: find training rows
with a negative Lagrange multiplier for the current solution (the KKT check against the full
set, Dantzig-Wolfe column generation). Both are one product of the training matrix with a
vector per query. Here they are done for a block of queries at once: one ``[B, d] x [d, N]``
matrix product reads the training matrix once for all ``B`` queries, which on one CPU thread
costs about as much as a single matrix-vector product (the pass is memory-bound).

Chunks are ``(rows [m, d] float32, squared norms [m] float32)`` covering the training set in
order (an in-memory matrix is one chunk; a FeatureStore yields its shards).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Pool:
    """Initial pool of one query: rows ``idx [P]`` with values ``rows [P, d]`` (float32),
    and over the whole training set the pool metric ``key [N]`` (higher = closer: ``-d2`` or
    the cosine) and ``d2 [N]`` (squared distances to the query), float32."""

    idx: Tensor
    rows: Tensor
    key: Tensor
    d2: Tensor


def merge_topk(val: Tensor, idx: Tensor, rows: Tensor, v: Tensor, i: Tensor, x: Tensor,
               m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Running top-``m`` over chunks: append one chunk's candidates, keep the ``m`` best."""
    val, idx, rows = torch.cat([val, v]), torch.cat([idx, i]), torch.cat([rows, x])
    if len(val) > m:
        _, j = torch.topk(val, m)
        val, idx, rows = val[j], idx[j], rows[j]
    return val, idx, rows


def pools(chunks: Iterable[tuple[Tensor, Tensor]], Q: Tensor, size: int, metric: str
          ) -> list[Pool]:
    """The ``size`` nearest training rows of each query ``Q [B, d]`` (float32), one pass.

    ``metric``: ``"euclidean"`` (smallest squared distance) or ``"cosine"`` (largest cosine).
    """
    B, d = Q.shape
    qq = (Q * Q).sum(1)  # [B]
    qn = qq.sqrt()
    key_parts: list[Tensor] = []
    d2_parts: list[Tensor] = []
    best = [(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, d))
            for _ in range(B)]
    offset = 0
    for x, sqn in chunks:
        D = Q @ x.T  # [B, m]
        d2 = (sqn[None, :] - 2 * D + qq[:, None]).clamp_min(0)
        key = -d2 if metric == "euclidean" else D / (sqn.sqrt()[None, :] * qn[:, None]
                                                     ).clamp_min(1e-30)
        v, i = torch.topk(key, min(size, x.shape[0]), dim=1)
        for b in range(B):
            best[b] = merge_topk(*best[b], v[b], i[b] + offset, x[i[b]], size)
        key_parts.append(key)
        d2_parts.append(d2)
        offset += x.shape[0]
    key, d2 = torch.cat(key_parts, 1), torch.cat(d2_parts, 1)
    return [Pool(best[b][1], best[b][2], key[b], d2[b]) for b in range(B)]


def price(chunks: Iterable[tuple[Tensor, Tensor]], n: int, R: Tensor, rp: Sequence[float],
          pool_idx: Sequence[Tensor], size: int, half_mu: float = 0.0,
          d2: Sequence[Tensor] | None = None, wd2: Sequence[float] | None = None
          ) -> list[tuple[Tensor, Tensor]]:
    """Up to ``size`` rows outside each pool with the most negative multiplier, one pass.

    For query ``b`` with residual ``R[b] = q - p`` (float32) and ``rp[b] = r . p`` the gain of
    row ``i`` is ``-lambda_i = r . x_i - r . p`` (minus ``half_mu * (d2_i - wd2)`` with
    locality); rows with gain ``<= 1e-9 ||r||^2`` or already in ``pool_idx[b]`` are skipped.
    Returns ``(indices [<= size], rows [<= size, d])`` per query.
    """
    B, d = R.shape
    rr = [max(float(r @ r), 1e-300) for r in R.double()]
    best = [(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, d))
            for _ in range(B)]
    in_pool = torch.zeros(B, n, dtype=torch.bool)
    for b in range(B):
        in_pool[b, pool_idx[b]] = True
    offset = 0
    for x, _ in chunks:
        m = x.shape[0]
        G = (R @ x.T).double()  # [B, m]
        G -= torch.as_tensor(rp, dtype=torch.float64)[:, None]
        if half_mu:
            G -= half_mu * (torch.stack([t[offset:offset + m] for t in d2]).double()
                            - torch.as_tensor(wd2, dtype=torch.float64)[:, None])
        G[in_pool[:, offset:offset + m]] = -float("inf")
        v, i = torch.topk(G.float(), min(size, m), dim=1)
        for b in range(B):
            ok = v[b] > 1e-9 * rr[b]
            vb, ib = v[b][ok], i[b][ok]
            best[b] = merge_topk(*best[b], vb, ib + offset, x[ib], size)
        offset += m
    return [(best[b][1], best[b][2]) for b in range(B)]


def full_scores(pool: Pool, metric: str, idx: Tensor, w: Tensor) -> Tensor:
    """Scores ``[N]`` float64 of a solution: selected rows ``1 + w``, the others the pool
    metric mapped into ``[-1, 0]`` (``-dist / max dist`` or ``(cos - 1) / 2``)."""
    if metric == "euclidean":
        dist = pool.d2.double().sqrt()
        sec = -dist / (float(dist.max()) + 1e-30)
    else:
        sec = (pool.key.double().clamp(-1, 1) - 1) / 2
    sec[idx] = 1.0 + w
    return sec


def step(gen: Generator[Any, Any, Any], i: int, reply: Any, reqs: dict[int, Any],
         done: dict[int, Any]) -> None:
    """Send ``reply`` to solver ``i`` (a generator); file its next request or its result."""
    try:
        reqs[i] = gen.send(reply)
    except StopIteration as stop:
        done[i] = stop.value
