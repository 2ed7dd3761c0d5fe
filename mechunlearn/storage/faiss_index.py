"""Approximate top-k over a store with faiss (optional dependency ``faiss-cpu``).

An IVF-PQ index built by streaming the store, whose memory is the compressed codes only
(Jegou, Douze and Schmid, "Product quantization for nearest neighbor search", TPAMI 2011);
the exact reference is :func:`mechunlearn.storage.retrieval.topk`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.features import Features
from mechunlearn.storage.retrieval import _METRICS, Metric, TopK, _queries, gather_rows, ids_at
from mechunlearn.storage.store import FeatureStore


class FaissIndex:
    """Approximate top-k over a store with faiss (optional: ``pip install faiss-cpu``).

    Build with :meth:`build` (streams the store; memory = ``n * code_size`` bytes), query with
    :meth:`search`. ``factory`` is a faiss index-factory string; the default is 4-bit fast-scan
    IVF-PQ (``IVF{nlist},PQ{m}x4fs``, ``nlist = min(1024, 4 sqrt(n))``, ``m`` up to 48:
    ``m / 2`` bytes per vector; 8-bit ``PQ{m}`` trained >100x slower here), or ``"Flat"``
    (exact, all vectors in memory) for stores under ``40 * nlist`` rows.
    """

    def __init__(self, index: Any, store: FeatureStore, metric: Metric) -> None:
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
    def build(cls, store: FeatureStore, metric: Metric = "cosine", factory: str | None = None,
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

    def search(self, queries: Tensor | Features, k: int) -> TopK:
        """Approximate top-``k`` per query (``[q, k]``, best first)."""
        q = _queries(queries, self.store.d)
        dist, idx = self.index.search(self._prep(q), k)
        s = torch.from_numpy(dist).float()
        i = torch.from_numpy(idx).long()
        if self.metric == "euclidean":
            s = -s
        return TopK(i, s, ids_at(self.store, i.clamp_min(0)), self.metric)
