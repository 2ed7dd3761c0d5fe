"""FeatureStore: round trip, crash-and-resume, streaming statistics, refusal to mix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn import ShapeError, StoreError, StoreMismatchError, extract, resid
from mechunlearn.errors import DTypeError, EmptyDataError, NonFiniteError
from mechunlearn.store import FeatureStore, RunningMoments, extract_to_store

TEXTS = [f"the quick fox {'jumps ' * (i % 4)}over dog {i}" for i in range(23)]


def test_round_trip_and_rows(tmp_path):
    x = torch.randn(23, 5)
    s = FeatureStore.create(tmp_path, resid(0), "fp", 5, shard_size=7)
    s.append(x[:10], [str(i) for i in range(10)])
    s.append(x[10:], [str(i) for i in range(10, 23)])
    s.flush()
    r = FeatureStore.open(tmp_path, verify=True)
    assert len(r) == 23 and r.n_shards == 4 and r.site == resid(0)
    assert torch.equal(r.load().values, x)
    assert r.ids == [str(i) for i in range(23)]
    assert torch.equal(r.rows([22, 0, 8, 8]), x[[22, 0, 8, 8]])
    with pytest.raises(ShapeError):
        r.rows([23])


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6), d=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_streaming_cov_equals_numpy(sizes, d, seed):
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(n, d, generator=g) * 3 + 5 for n in sizes]
    allx = torch.cat(chunks).double().numpy()
    rm = RunningMoments(d)
    for c in chunks:
        rm.update(c)
    if allx.shape[0] < 2:
        with pytest.raises(EmptyDataError):
            rm.cov()
        return
    np.testing.assert_allclose(rm.mean.numpy(), allx.mean(0), atol=1e-10)
    np.testing.assert_allclose(rm.cov().numpy(), np.cov(allx.T).reshape(d, d), atol=1e-9)
    # merging two accumulators equals one pass
    a, b = RunningMoments(d), RunningMoments(d)
    half = len(chunks) // 2
    for c in chunks[:half]:
        a.update(c)
    for c in chunks[half:]:
        b.update(c)
    a.merge(b)
    np.testing.assert_allclose(a.cov().numpy(), rm.cov().numpy(), atol=1e-9)


def test_extract_to_store_matches_extract(tiny_bridge, tmp_path):
    site = resid(1, "post", "mean")
    store = extract_to_store(tiny_bridge, TEXTS, site, tmp_path / "s", batch_size=4, shard_size=5)
    ref = extract(tiny_bridge, TEXTS, site, batch_size=4)
    torch.testing.assert_close(store.load().values, ref.values, atol=1e-6, rtol=0)
    assert store.n_shards == 5 and store.fingerprint == ref.fingerprint
    mean, cov, n = store.mean_cov()
    np.testing.assert_allclose(cov.numpy(), np.cov(ref.values.double().numpy().T), atol=1e-6)


def test_kill_and_resume(tiny_bridge, tmp_path, monkeypatch):
    """A crash between shards loses nothing; resuming does not recompute finished shards."""
    site = resid(0, "post")
    path = tmp_path / "s"
    import mechunlearn.store as store_mod

    calls = {"n": 0}
    real = FeatureStore._write_shard

    def crashing(self, n):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(self, n)

    monkeypatch.setattr(store_mod.FeatureStore, "_write_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(tiny_bridge, TEXTS, site, path, batch_size=4, shard_size=5)
    monkeypatch.setattr(store_mod.FeatureStore, "_write_shard", real)
    partial = FeatureStore.open(path, verify=True)
    assert len(partial) == 10 and partial.n_shards == 2
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]

    seen = []
    import mechunlearn.features as feat_mod

    real_extract = feat_mod.extract

    def spy(model, data, site, **kw):
        seen.append(len(data))
        return real_extract(model, data, site, **kw)

    monkeypatch.setattr(feat_mod, "extract", spy)
    store = extract_to_store(tiny_bridge, TEXTS, site, path, batch_size=4, shard_size=5)
    assert sum(seen) - 1 == len(TEXTS) - 10  # only the missing rows (+1 probe row for d)
    ref = real_extract(tiny_bridge, TEXTS, site)
    torch.testing.assert_close(store.load().values, ref.values, atol=1e-6, rtol=0)
    assert store.ids == [str(i) for i in range(len(TEXTS))]


def test_refuses_to_mix(tiny_bridge, tmp_path):
    path = tmp_path / "s"
    extract_to_store(tiny_bridge, TEXTS[:6], resid(0), path, shard_size=4)
    with pytest.raises(StoreMismatchError, match="site"):
        extract_to_store(tiny_bridge, TEXTS[:6], resid(1), path)
    with pytest.raises(StoreMismatchError, match="ids"):
        extract_to_store(tiny_bridge, TEXTS[:6], resid(0), path, ids=[f"x{i}" for i in range(6)])
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        FeatureStore.create(path, resid(0), "another-model", 32)
    with pytest.raises(StoreMismatchError, match="d"):
        FeatureStore.create(path, resid(0), FeatureStore.open(path).fingerprint, 31)


def test_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(StoreError):
        FeatureStore.open(tmp_path)
    s = FeatureStore.create(tmp_path / "a", resid(0), "fp", 3, shard_size=2)
    s.append(torch.ones(4, 3), ["a", "b", "c", "d"])
    shard = tmp_path / "a" / "shard_000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    FeatureStore.open(tmp_path / "a")  # size unchanged: cheap open passes
    with pytest.raises(StoreError, match="checksum"):
        FeatureStore.open(tmp_path / "a", verify=True)
    shard.write_bytes(bytes(data[:20]))
    with pytest.raises(StoreError, match="wrong size"):
        FeatureStore.open(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="Corrupt"):
        FeatureStore.open(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StoreError, match="not a mechunlearn"):
        FeatureStore.open(tmp_path / "b")


def test_bad_appends(tmp_path):
    s = FeatureStore.create(tmp_path, resid(0), "fp", 3)
    with pytest.raises(ShapeError):
        s.append(torch.ones(2, 4), ["a", "b"])
    with pytest.raises(ShapeError):
        s.append(torch.ones(2, 3), ["a"])
    with pytest.raises(NonFiniteError):
        s.append(torch.tensor([[0.0, float("nan"), 1.0]]), ["a"])
    with pytest.raises(DTypeError):
        FeatureStore.create(tmp_path / "x", resid(0), "fp", 3, dtype=torch.int64)
    with pytest.raises(EmptyDataError):
        s.load()
