"""Exact top-k search over feature stores larger than memory.

:func:`topk` scores queries ``[q, d]`` against every row of a FeatureStore (plain or
:class:`~mechunlearn.storage.sharded.ShardedStore`) one shard at a time and keeps a running top-k
per query, so memory is one shard plus ``q * k`` candidates whatever the store size. In exact
mode it returns what ``torch.topk`` over the full in-memory score matrix returns.
The approximate mode is :class:`~mechunlearn.storage.faiss_index.FaissIndex`; convex attribution
on a store is :func:`~mechunlearn.storage.attribute.attribute_store`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite
from mechunlearn.features import Features
from mechunlearn.storage.store import FeatureStore

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


def _queries(queries: Tensor | Features, d: int | None) -> Tensor:
    q = queries.values if isinstance(queries, Features) else torch.as_tensor(queries)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[0] == 0:
        raise ShapeError(f"Queries must be [d] or [q, d] with q >= 1, got {tuple(q.shape)}.")
    if d is not None and q.shape[1] != d:
        raise ShapeError(f"Queries have d={q.shape[1]} but the store has d={d}.")
    check_finite("queries", q)
    return q.detach().float()


def _chunks(train: FeatureStore | Features | Tensor) -> Iterator[tuple[Tensor, list[str]]]:
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


def topk(queries: Tensor | Features, train: FeatureStore | Features | Tensor, k: int, metric: Metric = "cosine",
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


def topk_in_memory(queries: Tensor | Features, values: Tensor, k: int, metric: Metric = "cosine") -> TopK:
    """Reference path: ``torch.topk`` over the full ``[q, N]`` score matrix (ids ``"0".."N-1"``)."""
    q = _queries(queries, values.shape[1])
    v, i = torch.topk(scores(values, q, metric).T, k, dim=1)
    return TopK(i, v, tuple(tuple(str(j) for j in r.tolist()) for r in i), metric)


def _shard_sizes(store: FeatureStore) -> list[int]:
    """Rows per shard, from the store's manifest (no shard is read)."""
    return [int(sh["n"]) for sh in store._m["shards"]]


def gather_rows(store: FeatureStore, indices: Tensor | list[int]) -> Tensor:
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


def ids_at(store: FeatureStore, indices: Tensor) -> tuple[tuple[str, ...], ...]:
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
