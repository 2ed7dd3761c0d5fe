"""Top-k search over feature stores larger than memory, and convex attribution on the result.

:func:`topk` scores queries ``[q, d]`` against every row of a FeatureStore (plain or
:class:`~mechunlearn.sharded_store.ShardedStore`) one shard at a time and keeps a running top-k
per query, so memory is one shard plus ``q * k`` candidates whatever the store size. In exact
mode it returns what ``torch.topk`` over the full in-memory score matrix returns.
:class:`FaissIndex` is the optional approximate mode (``pip install faiss-cpu``): an IVF-PQ
index built by streaming the store, whose memory is the compressed codes only.
:func:`attribute_store` retrieves a candidate pool this way and runs the convex decomposition
(:mod:`mechunlearn.attribution.convex`) on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite
from mechunlearn.features import Features

Metric = Literal["cosine", "dot", "euclidean"]
Transform = Callable[[Tensor], Tensor]
_METRICS = ("cosine", "dot", "euclidean")


@dataclass(frozen=True)
class TopK:
    """Best ``k`` training rows per query.

    Attributes:
        indices: ``[q, k]`` long, global row numbers in the store, best first.
        scores: ``[q, k]`` float32 (cosine, dot, or minus squared euclidean distance).
        ids: ``q`` tuples of ``k`` sample ids.
        metric: the metric used.
    """

    indices: Tensor
    scores: Tensor
    ids: tuple[tuple[str, ...], ...]
    metric: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"indices": self.indices.tolist(), "scores": self.scores.tolist(),
                "ids": [list(r) for r in self.ids], "metric": self.metric}


def _queries(queries: Any, d: int | None) -> Tensor:
    q = queries.values if isinstance(queries, Features) else torch.as_tensor(queries)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[0] == 0:
        raise ShapeError(f"Queries must be [d] or [q, d] with q >= 1, got {tuple(q.shape)}.")
    if d is not None and q.shape[1] != d:
        raise ShapeError(f"Queries have d={q.shape[1]} but the store has d={d}.")
    check_finite("queries", q)
    return q.detach().float()


def _chunks(train: Any) -> Iterator[tuple[Tensor, list[str]]]:
    """Yield ``(values [m, d], ids)`` of a store shard by shard, or in-memory data at once."""
    if hasattr(train, "iter_shards"):
        yield from train.iter_shards()
    elif isinstance(train, Features):
        yield train.values, list(train.ids)
    else:
        x = torch.as_tensor(train)
        if x.ndim != 2:
            raise ShapeError(f"Training features must be [N, d], got {tuple(x.shape)}.")
        yield x, [str(i) for i in range(x.shape[0])]


def scores(x: Tensor, q: Tensor, metric: Metric) -> Tensor:
    """Scores ``[m, q]`` of rows ``x [m, d]`` against queries ``q [q, d]`` (float32)."""
    x = x.float()
    if metric == "euclidean":
        sq = (x * x).sum(1, keepdim=True)
        dots = (x @ q[0])[:, None] if q.shape[0] == 1 else x @ q.T
        return -(sq - 2 * dots + (q * q).sum(1)[None]).clamp_min(0)
    s = (x @ q[0])[:, None] if q.shape[0] == 1 else x @ q.T
    if metric == "cosine":
        s = s / (x.norm(dim=1, keepdim=True) * q.norm(dim=1)[None]).clamp_min(1e-30)
    return s


def topk(queries: Any, train: Any, k: int, metric: Metric = "cosine",
         transform: Transform | None = None) -> TopK:
    """Exact top-``k`` rows of ``train`` for each query, streaming shard by shard.

    Args:
        queries: ``[d]`` or ``[q, d]`` tensor, or Features.
        train: FeatureStore/ShardedStore (streamed), Features or a ``[N, d]`` tensor.
        k: rows per query (``1 <= k <= N``).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"`` (score = minus squared distance).
        transform: applied to every shard's rows and to the queries before scoring
            (e.g. centering); rows ``[m, d] -> [m, d']``.

    Returns:
        :class:`TopK` with ``[q, k]`` indices and scores, best first.
    """
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}.")
    d = getattr(train, "d", None)
    q = _queries(queries, d if isinstance(d, int) else None)
    if transform is not None:
        q = transform(q)
    nq = q.shape[0]
    best_s = torch.empty(nq, 0)
    best_i = torch.empty(nq, 0, dtype=torch.long)
    best_ids: list[list[str]] = [[] for _ in range(nq)]
    offset = 0
    for vals, ids in _chunks(train):
        if vals.ndim != 2 or (transform is None and vals.shape[1] != q.shape[1]):
            raise ShapeError(f"Training rows have shape {tuple(vals.shape)}, queries d={q.shape[1]}.")
        x = transform(vals.float()) if transform is not None else vals
        s = scores(x, q, metric).T  # [q, m]
        m = s.shape[1]
        v, i = torch.topk(s, min(k, m), dim=1)
        cand_s = torch.cat([best_s, v], 1)
        cand_i = torch.cat([best_i, i + offset], 1)
        cand_ids = [best_ids[r] + [ids[j] for j in i[r].tolist()] for r in range(nq)]
        keep = min(k, cand_s.shape[1])
        v2, j2 = torch.topk(cand_s, keep, dim=1)
        best_s, best_i = v2, cand_i.gather(1, j2)
        best_ids = [[cand_ids[r][j] for j in j2[r].tolist()] for r in range(nq)]
        offset += m
    if offset == 0:
        raise EmptyDataError("The training store is empty: nothing to search.")
    if k > offset:
        raise ConfigError(f"k={k} is larger than the training set (N={offset}).")
    return TopK(best_i, best_s, tuple(tuple(r) for r in best_ids), metric)


def topk_in_memory(queries: Any, values: Tensor, k: int, metric: Metric = "cosine") -> TopK:
    """Reference path: ``torch.topk`` over the full ``[q, N]`` score matrix (ids ``"0".."N-1"``)."""
    q = _queries(queries, values.shape[1])
    v, i = torch.topk(scores(values, q, metric).T, k, dim=1)
    return TopK(i, v, tuple(tuple(str(j) for j in r.tolist()) for r in i), metric)


def _shard_sizes(store: Any) -> list[int]:
    """Rows per shard, from the store's manifest (no shard is read)."""
    return [int(sh["n"]) for sh in store._m["shards"]]


def gather_rows(store: Any, indices: Tensor | list[int]) -> Tensor:
    """Rows at global ``indices`` ``[m, d]`` float32, reading only the shards that hold them."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    out = torch.empty(idx.numel(), store.d)
    sizes = _shard_sizes(store)
    start = 0
    for i in range(store.n_shards):
        m = sizes[i]
        sel = (idx >= start) & (idx < start + m)
        if bool(sel.any()):
            out[sel] = store._read(i)[0][idx[sel] - start].float()
        start += m
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= start):
        raise ShapeError(f"Row indices must be in [0, {start}), got {idx.min()}..{idx.max()}.")
    return out


def ids_at(store: Any, indices: Tensor) -> tuple[tuple[str, ...], ...]:
    """Sample ids of global row ``indices [q, k]``, reading only the shards that hold them."""
    flat = indices.reshape(-1).tolist()
    found: dict[int, str] = {}
    start = 0
    for i, m in enumerate(_shard_sizes(store)):
        need = [j for j in flat if start <= j < start + m and j not in found]
        if need:
            ids = store._read(i)[1]
            found.update({j: ids[j - start] for j in need})
        start += m
    return tuple(tuple(found[int(j)] for j in row) for row in indices.tolist())


class FaissIndex:
    """Approximate top-k over a store with faiss (optional: ``pip install faiss-cpu``).

    Build with :meth:`build` (streams the store; memory = ``n * code_size`` bytes), query with
    :meth:`search`. ``factory`` is a faiss index-factory string; the default is 4-bit fast-scan
    IVF-PQ (``IVF{nlist},PQ{m}x4fs``, ``nlist = min(1024, 4 sqrt(n))``, ``m`` up to 48:
    ``m / 2`` bytes per vector; 8-bit ``PQ{m}`` trained >100x slower here), or ``"Flat"``
    (exact, all vectors in memory) for stores under ``40 * nlist`` rows.
    """

    def __init__(self, index: Any, store: Any, metric: Metric) -> None:
        self.index, self.store, self.metric = index, store, metric
        self.factory = ""

    @staticmethod
    def _faiss() -> Any:
        try:
            import faiss
        except ImportError as e:
            raise ConfigError(
                "Approximate search needs faiss: `pip install faiss-cpu` (or faiss-gpu). "
                "Exact search (retrieval.topk) needs nothing extra."
            ) from e
        return faiss

    def _prep(self, x: Tensor) -> np.ndarray:
        x = x.float()
        if self.metric == "cosine":
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return np.ascontiguousarray(x.numpy())

    @classmethod
    def build(cls, store: Any, metric: Metric = "cosine", factory: str | None = None,
              nprobe: int = 16, train_rows: int = 50_000, seed: int = 0) -> FaissIndex:
        """Train on up to ``train_rows`` evenly spread rows, then add every shard."""
        faiss = cls._faiss()
        if metric not in _METRICS:
            raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}.")
        n = len(store)
        if n == 0:
            raise EmptyDataError("Cannot index an empty store.")
        if factory is None:
            nlist = max(1, min(1024, int(4 * n ** 0.5)))
            m = next(c for c in (48, 32, 24, 16, 12, 8, 4, 2) if store.d % c == 0) \
                if store.d % 2 == 0 else 0
            factory = f"IVF{nlist},PQ{m}x4fs" if n >= 40 * nlist and m else "Flat"
        fm = faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(store.d, factory, fm)
        self = cls(index, store, metric)
        self.factory = factory
        if not index.is_trained:
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(n, generator=g)[: min(train_rows, n)].sort().values
            index.train(self._prep(gather_rows(store, pick)))
        for vals, _ in store.iter_shards():
            index.add(self._prep(vals))
        self.set_nprobe(nprobe)
        return self

    def set_nprobe(self, nprobe: int) -> None:
        """Inverted lists visited per query (IVF indexes; more = slower, higher recall)."""
        if "IVF" in self.factory:
            self._faiss().extract_index_ivf(self.index).nprobe = int(nprobe)

    def search(self, queries: Any, k: int) -> TopK:
        """Approximate top-``k`` per query (``[q, k]``, best first)."""
        q = _queries(queries, self.store.d)
        dist, idx = self.index.search(self._prep(q), k)
        s = torch.from_numpy(dist).float()
        i = torch.from_numpy(idx).long()
        if self.metric == "euclidean":
            s = -s
        return TopK(i, s, ids_at(self.store, i.clamp_min(0)), self.metric)


def attribute_store(query: Any, store: Any, k: int = 32, pool: int = 256,
                    index: FaissIndex | None = None, **config: Any) -> Any:
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


def _convex_prep(store: Any, cfg: Any) -> Transform:
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
