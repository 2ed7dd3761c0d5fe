"""Convex attribution of a query over a (sharded) store larger than memory."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechunlearn.errors import EmptyDataError
from mechunlearn.storage.faiss_index import FaissIndex
from mechunlearn.storage.retrieval import Transform, gather_rows, ids_at
from mechunlearn.storage.store import FeatureStore

if TYPE_CHECKING:
    from mechunlearn.attribution import Attribution, ConvexConfig


def attribute_store(query: Any, store: FeatureStore, k: int = 32, pool: int = 256,
                    index: FaissIndex | None = None, **config: Any) -> Attribution:
    """Convex decomposition of one query ``[d]`` over a (sharded) store larger than memory.

    Exact mode (``index=None``): :class:`~mechunlearn.attribution.ConvexAttributor` streaming
    the store shard by shard (nearest-``pool`` candidates merged across shards, greedy simplex
    solve on the pool, pricing passes over the store); equals the in-memory path.
    Approximate mode: the ``pool`` candidates come from a :class:`FaissIndex` (built on the
    raw rows with the pool metric), are read from the store and preprocessed with the store's
    statistics (``center``/``normalize`` of :class:`~mechunlearn.attribution.ConvexConfig`),
    and the convex solver runs on that pool only (no pricing passes). ``scores`` ``[N]``:
    the solver's scores on pool rows, ``-1`` elsewhere.

    Returns:
        :class:`~mechunlearn.attribution.Attribution` (indices are global store rows).
    """
    from dataclasses import replace

    from mechunlearn.attribution import Attribution, ConvexAttributor, ConvexConfig
    from mechunlearn.attribution.base import as_query

    cfg = ConvexConfig(k=k, pool=pool, **config)
    if index is None:
        return ConvexAttributor(store, cfg).attribute(query)
    t0 = time.perf_counter()
    n = len(store)
    q_raw = as_query(query, store.d, store.site, store.fingerprint)
    P = min(max(cfg.pool, cfg.k), n)
    hits = index.search(q_raw, P)
    pidx = hits.indices[0][hits.indices[0] >= 0]
    if len(pidx) < cfg.k:
        raise EmptyDataError(f"faiss returned {len(pidx)} candidates, fewer than k={cfg.k}; "
                             "raise nprobe or use exact mode.")
    prep = _convex_prep(store, cfg)
    sub = replace(cfg, center=False, normalize="none", pool=len(pidx))
    if hasattr(sub, "refresh"):
        sub = replace(sub, refresh=0)
    att = ConvexAttributor(prep(gather_rows(store, pidx)), sub).attribute(prep(q_raw))
    idx = pidx[torch.tensor(att.indices, dtype=torch.long)]
    sc = torch.full((n,), -1.0, dtype=torch.float64)
    sc[pidx] = att.scores.double()
    return Attribution(indices=tuple(int(i) for i in idx), ids=ids_at(store, idx[None])[0],
                       weights=att.weights, residual=att.residual, scores=sc,
                       method="convex", site=store.site, seconds=time.perf_counter() - t0,
                       info={**att.info, "retrieval": "faiss"})


def _convex_prep(store: FeatureStore, cfg: ConvexConfig) -> Transform:
    """ConvexAttributor's preprocessing for a store: centre, standardise, l2 (``[m, d]``)."""
    mu = scale = None
    if cfg.center or cfg.normalize == "standardize":
        mean, cov, _ = store.mean_cov()
        if cfg.center:
            mu = mean.float()
        if cfg.normalize == "standardize":
            std = torch.diagonal(cov).double().clamp_min(0).sqrt()
            scale = std.clamp_min(cfg.std_floor * float(std.median()) + 1e-30).float()

    def prep(x: Tensor) -> Tensor:
        x = x.float()
        if mu is not None:
            x = x - mu
        if scale is not None:
            x = x / scale
        if cfg.normalize == "l2":
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return x

    return prep
