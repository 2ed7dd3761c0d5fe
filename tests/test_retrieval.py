"""Streaming top-k over FeatureStores equals the in-memory torch.topk path; attribute_store
equals the in-memory convex decomposition; faiss is optional with a clear error."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn.attribution import ConvexAttributor
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError
from mechunlearn.retrieval import (
    FaissIndex,
    attribute_store,
    gather_rows,
    ids_at,
    topk,
    topk_in_memory,
)
from mechunlearn.sites import Site
from mechunlearn.store import FeatureStore

SITE = Site("blocks.0.hook_resid_post", "mean")


class ChunkStore:
    """Duck-typed store over in-memory chunks; refuses to load everything at once."""

    def __init__(self, chunks: list[torch.Tensor]) -> None:
        self.chunks = chunks
        self.d = chunks[0].shape[1]

    def iter_shards(self):
        start = 0
        for c in self.chunks:
            yield c, [f"id{start + i}" for i in range(c.shape[0])]
            start += c.shape[0]

    def load(self):  # pragma: no cover - must never be called
        raise AssertionError("topk must stream, not load the whole store")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 24, generator=g) + 0.3
    Q = torch.randn(4, 24, generator=g)
    store = FeatureStore.create(tmp_path_factory.mktemp("st"), SITE, "fp", 24, shard_size=64)
    store.append(X, [f"x{i}" for i in range(600)])
    store.flush()
    return X, Q, store


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=8), k=st.integers(1, 12),
       nq=st.integers(1, 3), metric=st.sampled_from(["cosine", "dot", "euclidean"]),
       seed=st.integers(0, 10_000))
def test_streaming_topk_equals_in_memory(sizes, k, nq, metric, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(sum(sizes), 6, generator=g)
    Q = torch.randn(nq, 6, generator=g)
    k = min(k, X.shape[0])
    got = topk(Q, ChunkStore(list(X.split(sizes))), k, metric=metric)
    want = topk_in_memory(Q, X, k, metric=metric)
    assert torch.equal(got.indices, want.indices)
    assert torch.allclose(got.scores, want.scores, rtol=1e-6, atol=1e-6)
    assert got.ids == tuple(tuple(f"id{i}" for i in row) for row in want.indices.tolist())
    assert got.indices.shape == (nq, k)


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_store_topk_ids_and_single_query(data, metric):
    X, Q, store = data
    got = topk(Q[0], store, 10, metric=metric)
    want = topk_in_memory(Q[0], X, 10, metric=metric)
    assert torch.equal(got.indices, want.indices)
    assert got.ids[0] == tuple(f"x{i}" for i in want.indices[0].tolist())
    assert ids_at(store, got.indices) == got.ids
    assert torch.equal(gather_rows(store, got.indices[0]), X[got.indices[0]])


def test_float16_store_and_transform(tmp_path, data):
    X, Q, _ = data
    s16 = FeatureStore.create(tmp_path, SITE, "fp", 24, dtype=torch.float16, shard_size=50)
    s16.append(X, [str(i) for i in range(600)])
    s16.flush()
    mu = X.mean(0)
    got = topk(Q, s16, 7, transform=lambda x: x - mu)
    want = topk_in_memory(Q - mu, X.half().float() - mu, 7)
    assert torch.equal(got.indices, want.indices)


def test_topk_errors(data, tmp_path):
    X, Q, store = data
    with pytest.raises(ConfigError, match="larger than the training set"):
        topk(Q, store, 601)
    with pytest.raises(ShapeError, match="d=5"):
        topk(torch.zeros(5), store, 3)
    with pytest.raises(ConfigError, match="metric"):
        topk(Q, store, 3, metric="l1")
    with pytest.raises(ConfigError, match="positive int"):
        topk(Q, store, 0)
    empty = FeatureStore.create(tmp_path, SITE, "fp", 24)
    with pytest.raises(EmptyDataError):
        topk(Q, empty, 3)


@pytest.mark.parametrize("cfg", [{}, {"normalize": "l2"}, {"pool_metric": "cosine"},
                                 {"normalize": "standardize", "center": False}])
def test_attribute_store_equals_in_memory_convex(data, cfg):
    X, Q, store = data
    for q in Q[:2]:
        got = attribute_store(q, store, k=6, pool=40, **cfg)
        want = ConvexAttributor(X, k=6, pool=40, **cfg).attribute(q)
        assert got.indices == want.indices
        assert got.ids == tuple(f"x{i}" for i in want.indices)
        assert torch.allclose(got.weights, want.weights, atol=1e-6)
        assert abs(got.residual - want.residual) <= 1e-6


def test_faiss_missing_gives_clear_error(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        FaissIndex.build(data[2])


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_faiss_flat_matches_exact_and_ivfpq_recalls(data, metric):
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(1)
    X, Q, store = data
    flat = FaissIndex.build(store, metric=metric, factory="Flat")
    got, want = flat.search(Q, 10), topk(Q, store, 10, metric=metric)
    assert torch.equal(got.indices, want.indices) and got.ids == want.ids
    assert torch.allclose(got.scores, want.scores, rtol=1e-4, atol=1e-4)
    if metric == "cosine":
        ivf = FaissIndex.build(store, metric=metric, factory="IVF8,PQ6x4", nprobe=8)
        approx = ivf.search(Q, 10)
        recall = sum(len(set(a.tolist()) & set(b.tolist()))
                     for a, b in zip(approx.indices, want.indices)) / want.indices.numel()
        assert recall >= 0.3


def test_attribute_store_faiss_pool(data):
    pytest.importorskip("faiss")
    X, Q, store = data
    idx = FaissIndex.build(store, metric="euclidean", factory="Flat")
    got = attribute_store(Q[0], store, k=6, pool=600, index=idx)
    want = ConvexAttributor(X, k=6, pool=600).attribute(Q[0])
    assert got.indices == want.indices
    assert abs(got.residual - want.residual) <= 1e-6
    assert got.info["retrieval"] == "faiss" and len(got.scores) == 600
