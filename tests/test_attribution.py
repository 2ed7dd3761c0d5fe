"""Convex-decomposition attribution, RepSim and Random: properties, degenerate cases, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mechunlearn.attribution import (
    Attribution,
    ConvexAttributor,
    FeatureMismatchError,
    RandomAttributor,
    RepSim,
    convex_attribution,
    simplex_lsq,
)
from mechunlearn.errors import ConfigError, EmptyDataError, NonFiniteError, ShapeError
from mechunlearn.features import Features
from mechunlearn.sites import resid

SETTINGS = settings(max_examples=30, deadline=None)


def _feats(x: torch.Tensor, site=None, fp="m1") -> Features:
    return Features(x, tuple(f"s{i}" for i in range(len(x))), site or resid(0), fp)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(3, 60), d=st.integers(2, 24),
       k=st.integers(1, 12), normalize=st.sampled_from(["none", "l2", "standardize"]),
       rule=st.sampled_from(["line", "correlation"]))
def test_weights_on_simplex_and_residual_monotone(seed, n, d, k, normalize, rule):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    q = torch.randn(d, generator=g)
    k = min(k, n)
    a = ConvexAttributor(X, k=k, pool=16, normalize=normalize, rule=rule).attribute(q)
    w = a.weights
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-9
    assert 1 <= len(a.indices) <= k and len(set(a.indices)) == len(a.indices)
    hist = a.info["history"]
    assert all(h2 <= h1 + 1e-9 for h1, h2 in zip(hist, hist[1:]))
    assert abs(hist[-1] - a.residual) < 1e-6
    # selected samples rank first, by weight
    assert set(a.ranking(len(a.indices)).tolist()) == set(a.indices)


@SETTINGS
@given(seed=st.integers(0, 10_000), m=st.integers(1, 5), d=st.integers(24, 64))
def test_known_convex_combination_is_recovered(seed, m, d):
    # d >= 24 > 4m: in lower dimension q has other exact sparse decompositions (not unique)
    g = torch.Generator().manual_seed(seed)
    n = 50
    X = torch.randn(n, d, generator=g, dtype=torch.float64).float()
    idx = torch.randperm(n, generator=g)[:m]
    w = torch.rand(m, generator=g, dtype=torch.float64) + 0.2
    w = w / w.sum()
    q = (w.float() @ X[idx])
    a = ConvexAttributor(X, k=10, pool=n, tol=1e-6, center=False).attribute(q)
    assert a.residual < 1e-4
    got = dict(zip(a.indices, a.weights.tolist()))
    for i, wi in zip(idx.tolist(), w.tolist()):
        assert abs(got.get(i, 0.0) - wi) < 1e-3
    assert sum(v for i, v in got.items() if i not in idx.tolist()) < 1e-3


def test_residual_decreases_as_budget_grows():
    g = torch.Generator().manual_seed(1)
    X, q = torch.randn(200, 30, generator=g), torch.randn(30, generator=g)
    res = [ConvexAttributor(X, k=k, pool=200, tol=0.0).attribute(q).residual for k in (1, 2, 4, 8, 16, 31)]
    assert all(b <= a + 1e-9 for a, b in zip(res, res[1:]))
    assert res[-1] < res[0]


def test_query_equal_to_training_point():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(100, 16, generator=g)
    a = ConvexAttributor(X, k=5).attribute(X[17])
    assert a.indices == (17,) and a.weights.tolist() == [1.0] and a.residual < 1e-6


def test_duplicates_share_weight():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 8, generator=g)
    X[5] = X[9]
    q = 0.5 * X[9] + 0.5 * X[20]
    a = ConvexAttributor(X, k=6, pool=40, tol=1e-8).attribute(q)
    got = dict(zip(a.indices, a.weights.tolist()))
    assert a.residual < 1e-5
    assert abs(got.get(5, 0) + got.get(9, 0) - 0.5) < 1e-6 and abs(got[20] - 0.5) < 1e-6


def test_query_outside_hull_returns_nearest_vertex():
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([3.0, 3.0])  # outside: closest hull point is (0.5, 0.5)
    a = ConvexAttributor(X, k=3, center=False, tol=0.0).attribute(q)
    got = dict(zip(a.indices, a.weights.tolist()))
    assert set(got) == {1, 2} and abs(got[1] - 0.5) < 1e-9
    assert abs(a.residual - np.hypot(2.5, 2.5) / np.hypot(3, 3)) < 1e-6
    assert a.info["optimal"] in ("pool", "global")


def test_simplex_lsq_matches_scipy_on_full_problem():
    from scipy.optimize import nnls

    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 10, generator=g, dtype=torch.float64).numpy()
    q = torch.randn(10, generator=g, dtype=torch.float64).numpy()
    sol = simplex_lsq(X, q, k=30, tol=0.0)
    lam = 1e4
    A = np.vstack([X.T, lam * np.ones((1, 30))])
    w_ref, _ = nnls(A, np.concatenate([q, [lam]]), maxiter=5000)
    ref = float(np.sum((q - X.T @ w_ref) ** 2))
    assert sol.optimal and sol.resid_sq <= ref + 1e-6


def test_features_input_and_mismatch_errors():
    X = torch.randn(20, 6)
    tr = _feats(X)
    a = ConvexAttributor(tr, k=3).attribute(_feats(X[:1]))
    assert a.site == resid(0) and a.ids[0] == "s0"
    with pytest.raises(FeatureMismatchError, match="Site"):
        ConvexAttributor(tr, k=3).attribute(_feats(X[:1], site=resid(1)))
    with pytest.raises(FeatureMismatchError, match="model"):
        RepSim(tr, k=3).attribute(_feats(X[:1], fp="other"))


@pytest.mark.parametrize("cls", [ConvexAttributor, RepSim, RandomAttributor])
def test_bad_input(cls):
    X = torch.randn(10, 4)
    with pytest.raises(EmptyDataError):
        cls(torch.empty(0, 4), k=1)
    with pytest.raises(ConfigError, match="larger than the training set"):
        cls(X, k=11)
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        cls(bad, k=2)
    att = cls(X, k=2)
    with pytest.raises(ShapeError, match="d=5"):
        att.attribute(torch.randn(5))
    with pytest.raises(NonFiniteError):
        att.attribute(torch.tensor([1.0, float("inf"), 0.0, 0.0]))
    with pytest.raises(ShapeError):
        cls(torch.randn(10), k=1)


def test_config_errors():
    with pytest.raises(ConfigError):
        ConvexAttributor(torch.randn(5, 2), normalize="zscore")
    with pytest.raises(ConfigError):
        ConvexAttributor(torch.randn(5, 2), k=0)
    with pytest.raises(ConfigError):
        RepSim(torch.randn(5, 2), k=2, metric="manhattan")


def test_store_input_matches_memory(tmp_path):
    from mechunlearn.store import FeatureStore

    g = torch.Generator().manual_seed(5)
    X = torch.randn(300, 12, generator=g)
    ids = [f"x{i}" for i in range(300)]
    st_ = FeatureStore.create(tmp_path / "s", resid(0), "m1", 12, shard_size=64)
    st_.append(X, ids)
    st_.flush()
    store = FeatureStore.open(tmp_path / "s")
    q = _feats(X[:1] * 0.3 + X[1:2] * 0.7)
    for kw in ({}, {"normalize": "standardize"}, {"pool_metric": "cosine"}):
        a_mem = ConvexAttributor(_feats(X), k=8, pool=32, **kw).attribute(q)
        a_st = ConvexAttributor(store, k=8, pool=32, **kw).attribute(q)
        assert a_mem.indices == a_st.indices and a_st.ids[0] in ("x0", "x1")
        assert torch.allclose(a_mem.scores, a_st.scores, atol=1e-5)
    r_mem, r_st = RepSim(_feats(X), k=5, center=True), RepSim(store, k=5, center=True)
    assert r_mem.attribute(q).indices == r_st.attribute(q).indices


def test_repsim_ranks_by_cosine_and_roundtrip():
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    a = RepSim(X, k=2).attribute(torch.tensor([1.0, 0.1]))
    assert a.ranking().tolist() == [0, 2, 1, 3] and np.isnan(a.residual)
    b = Attribution.from_dict(a.to_dict())
    assert b.indices == a.indices and torch.equal(b.scores, a.scores)
    c = convex_attribution(torch.tensor([0.5, 0.5]), X, k=2, center=False)
    assert Attribution.from_dict(c.to_dict()).residual == c.residual


def test_random_is_seeded_and_many_queries():
    X = torch.randn(50, 3)
    a1 = RandomAttributor(X, k=5, seed=7).attribute_many(X[:3])
    a2 = RandomAttributor(X, k=5, seed=7).attribute_many(X[:3])
    assert [a.indices for a in a1] == [a.indices for a in a2] and len(a1) == 3
    assert a1[0].indices != a1[1].indices


def test_pricing_finds_vertices_outside_the_nearest_neighbour_pool():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(4, 64, generator=g) * 4
    X = centres.repeat_interleave(100, 0) + torch.randn(400, 64, generator=g)
    q = 0.5 * X[10] + 0.5 * X[310]  # halfway between two clusters
    no_price = ConvexAttributor(X, k=8, pool=16, refresh=0, tol=1e-6).attribute(q)
    priced = ConvexAttributor(X, k=8, pool=16, refresh=3, refresh_size=16, tol=1e-6).attribute(q)
    assert priced.residual < 1e-4 < no_price.residual
    assert set(priced.indices) == {10, 310} and priced.info["rounds"] >= 1


def test_locality_trades_residual_for_closeness():
    g = torch.Generator().manual_seed(8)
    X, q = torch.randn(60, 10, generator=g, dtype=torch.float64), torch.randn(10, generator=g,
                                                                            dtype=torch.float64)
    mu = 0.5

    def parts(a):
        w, rows = a.weights, X[list(a.indices)]
        r2 = float(((q - w @ rows) ** 2).sum())
        spread = float(w @ ((rows - q) ** 2).sum(1))
        return r2, spread

    plain = ConvexAttributor(X.float(), k=60, pool=60, center=False, tol=0.0).attribute(q.float())
    local = ConvexAttributor(X.float(), k=60, pool=60, center=False, tol=0.0,
                             locality=mu).attribute(q.float())
    (r_p, s_p), (r_l, s_l) = parts(plain), parts(local)
    assert r_l + mu * s_l <= r_p + mu * s_p + 1e-5  # local optimum of its own objective
    assert s_l < s_p and r_l >= r_p - 1e-6  # closer samples, bigger residual
    assert abs(float(local.weights.sum()) - 1) < 1e-12 and (local.weights >= 0).all()
    with pytest.raises(ConfigError):
        ConvexAttributor(X, locality=-1.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 10))
def test_whitened_repsim_is_affine_invariant(seed, d):
    """As the ridge -> 0, whitened cosine scores do not change under x -> x M + b."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(200, d, generator=g, dtype=torch.float64)
    q = torch.randn(d, generator=g, dtype=torch.float64)
    M = torch.randn(d, d, generator=g, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64) * 5
    # the ridge's bias grows with cond(M)^2: the invariance holds for well-conditioned maps
    # (a random M with cond 1,275 moved scores by 2e-4 at ridge 1e-9; with cond < 100 the
    # largest change over 3,900 random cases was 3.6e-5)
    assume(float(torch.linalg.cond(M)) < 100)
    s1 = RepSim(X, k=3, whiten=1e-9).scores(q)
    s2 = RepSim(X @ M + b, k=3, whiten=1e-9).scores(q @ M + b)
    assert torch.allclose(s1, s2, atol=1e-4)
    # plain cosine is not invariant (sanity check that the test can fail)
    if d >= 3:
        assert not torch.allclose(RepSim(X, k=3).scores(q), RepSim(X @ M + b, k=3).scores(q @ M + b),
                                  atol=1e-4)


def test_whitening_discounts_a_shared_direction():
    """A direction most training samples vary along counts less once whitened."""
    g = torch.Generator().manual_seed(0)
    n, d = 400, 6
    X = torch.randn(n, d, generator=g) * 0.05
    X[:, 0] += torch.randn(n, generator=g) * 5.0  # shared high-variance nuisance
    X[0, 0], X[0, 1] = 0.0, 1.0  # the one sample that shares the query's rare feature
    q = torch.zeros(d)
    q[0], q[1] = 8.0, 1.0
    assert RepSim(X, k=1, center=True).attribute(q).indices[0] != 0
    assert RepSim(X, k=1, whiten=1e-3).attribute(q).indices[0] == 0


def test_whitened_store_matches_memory_and_bad_ridge(tmp_path):
    from mechunlearn.store import FeatureStore

    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g)
    st_ = FeatureStore.create(tmp_path / "s", resid(0), "m1", 8, shard_size=64)
    st_.append(X, [f"x{i}" for i in range(300)])
    st_.flush()
    store = FeatureStore.open(tmp_path / "s")
    q = _feats(X[:1] * 0.5 + X[1:2] * 0.5)
    for metric in ("cosine", "dot", "euclidean"):
        a = RepSim(_feats(X), k=5, metric=metric, whiten=1e-2).attribute(q)
        b = RepSim(store, k=5, metric=metric, whiten=1e-2).attribute(q)
        assert a.indices == b.indices and torch.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    for bad in (0.0, -1.0, float("nan"), "x", True):
        with pytest.raises(ConfigError, match="whiten"):
            RepSim(X, k=5, whiten=bad)
    with pytest.raises(ConfigError, match="zero variance"):
        RepSim(torch.ones(10, 3), k=2, whiten=1e-2)
