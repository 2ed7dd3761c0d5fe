"""Abliteration toolkit: direction choice, layer kernels, norm preservation, Pareto search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechunlearn.ablation import (
    LayerKernel,
    ablate_,
    diff_directions,
    front,
    interpolate,
    layer_directions,
    pareto_mask,
    pareto_search,
    plot_front,
)
from mechunlearn.errors import ConfigError, NonFiniteError, ShapeError
from mechunlearn.models import tiny_gpt2
from mechunlearn.weights import find_writers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(n_layer=3, d_model=32)


def _unit(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    return u / u.norm()


def _rows(w):
    W = w.module.weight.detach().double()
    return W.T if isinstance(w.module, torch.nn.Linear) else W


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.original_model.named_parameters()}


# --- direction choice -------------------------------------------------------------------

def test_directions_recover_planted_shift_and_median_resists_outliers():
    rng = np.random.default_rng(0)
    d, n = 16, 200
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    neg = rng.normal(size=(n, d))
    pos = neg + 2 * w + 0.3 * rng.normal(size=(n, d))
    for m in ("mean", "median", "pca", "pca_bias"):
        u = diff_directions(pos, neg, m)
        assert u.shape == (1, d)
        # found *and* oriented (pca_bias: a component of the pooled covariance, noisier)
        assert float(u[0].double() @ torch.tensor(w)) > (0.9 if m == "pca_bias" else 0.95), m
    # a few huge outlying pairs along another axis pull the mean, not the median
    v = np.eye(d)[0] - (np.eye(d)[0] @ w) * w
    v /= np.linalg.norm(v)
    pos2 = pos.copy()
    pos2[:20] += 200 * v
    mean_cos = float(diff_directions(pos2, neg, "mean")[0].double() @ torch.tensor(w))
    med_cos = float(diff_directions(pos2, neg, "median")[0].double() @ torch.tensor(w))
    assert med_cos > 0.95 > mean_cos


def test_multi_direction_basis_is_orthonormal_and_spans_two_planted_shifts():
    rng = np.random.default_rng(1)
    d, n = 12, 300
    a, b = np.eye(d)[0], np.eye(d)[1]
    neg = rng.normal(size=(n, d))
    pos = neg + 3 * a + rng.choice([-2.0, 2.0], size=(n, 1)) * b + 0.1 * rng.normal(size=(n, d))
    for m in ("mean", "pca"):
        B = diff_directions(pos, neg, m, k=2).double()
        assert torch.allclose(B @ B.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
        plane = torch.tensor(np.stack([a, b]))
        assert float(torch.linalg.matrix_norm(B @ plane.T)) ** 2 > 1.98  # span{a, b}


def test_literal_pca_ratio_prefers_a_tiny_variance_component_scale_free_does_not():
    rng = np.random.default_rng(2)
    n, d = 200, 6
    x = rng.normal(size=(2 * n, d)) * np.array([5, 4, 3, 2, 1, 1e-2])
    y = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    x[y, 0] += 6.0          # the separating component: large variance, large gap
    x[y, 5] += 5e-3         # a tiny-variance tail component with a small absolute gap
    lit = diff_directions(x[y], x[~y], "pca_bias_literal", paired=False)[0].abs()
    free = diff_directions(x[y], x[~y], "pca_bias", paired=False)[0].abs()
    assert int(free.argmax()) == 0 and int(lit.argmax()) == 5


def test_interpolate_between_layers_and_bad_inputs():
    u0, u1 = torch.eye(4)[0], torch.eye(4)[1]
    dirs = torch.stack([u0, u1])
    assert torch.equal(interpolate(dirs, 0), u0)
    mid = interpolate(dirs, 0.5)
    assert torch.allclose(mid, (u0 + u1) / math.sqrt(2), atol=1e-6)
    q = interpolate(dirs, 0.25)
    assert float(q @ u0) > float(q @ u1) > 0
    with pytest.raises(ConfigError):
        interpolate(dirs, 1.5)
    with pytest.raises(ConfigError):
        interpolate(torch.stack([u0, -u0]), 0.5)
    with pytest.raises(ConfigError):
        diff_directions(torch.ones(5, 4), torch.ones(5, 4), "mean")
    with pytest.raises(ConfigError):
        diff_directions(torch.randn(5, 4), torch.randn(5, 4), "max")
    with pytest.raises(ShapeError):
        diff_directions(torch.randn(5, 4), torch.randn(5, 3))
    ld = layer_directions([torch.randn(8, 4)] * 3, [torch.zeros(8, 4)] * 3)
    assert ld.shape == (3, 1, 4)


# --- kernel -----------------------------------------------------------------------------

def test_kernel_profile():
    k = LayerKernel(max_weight=1.0, peak=2.0, width=2.0, min_weight=0.2)
    np.testing.assert_allclose(k.weights(6), [0.2, 0.6, 1.0, 0.6, 0.2, 0.0])
    np.testing.assert_allclose(LayerKernel.constant(0.5).weights(3), [0.5] * 3)
    assert not LayerKernel.off().weights(4).any()
    with pytest.raises(ConfigError):
        LayerKernel(max_weight=-1)
    with pytest.raises(ConfigError):
        LayerKernel(width=float("nan"))


# --- the weight edit --------------------------------------------------------------------

def test_norm_preserving_keeps_row_norms_and_removes_direction(model):
    u = _unit(32, 3)
    ws = find_writers(model)
    before = {w.name: _rows(w).clone() for w in ws}
    with ablate_(model, u, embed=1.0, norm_preserving=True) as h:
        assert len(h.names) == len(ws)
        for w in ws:
            R, R0 = _rows(w), before[w.name]
            assert not torch.equal(R, R0)
            torch.testing.assert_close(R.norm(dim=1), R0.norm(dim=1), rtol=1e-5, atol=1e-6)
            assert float((R @ u.double()).abs().max()) < 1e-5 * float(R0.abs().max())
        ids = torch.randint(0, int(model.cfg.d_vocab), (2, 6))
        _, cache = model.run_with_cache(ids)
        for w in ws:
            assert float((cache[w.hook].double() @ u.double()).abs().max()) < 1e-4
    # plain (not norm-preserving) ablation shrinks rows that had a component along u
    with ablate_(model, u, embed=1.0):
        w = ws[0]
        assert float((before[w.name].norm(dim=1) - _rows(w).norm(dim=1)).min()) >= -1e-6
        assert float((before[w.name].norm(dim=1) - _rows(w).norm(dim=1)).max()) > 1e-3
    for w in ws:
        assert torch.equal(_rows(w), before[w.name])


def test_zero_kernel_weight_leaves_that_layers_writers_bit_identical(model):
    u = _unit(32, 4)
    params = list(model.original_model.parameters())
    snap = [p.detach().clone() for p in params]
    attn = LayerKernel(max_weight=1.0, peak=0.0, width=1.0, min_weight=0.5)  # 1, 0.5, 0
    mlp = LayerKernel(max_weight=0.8, peak=2.0, width=0.5, min_weight=0.8)   # 0, 0, 0.8
    ws = {w.name: w for w in find_writers(model)}
    expected = ["blocks.0.attn.o", "blocks.1.attn.o", "blocks.2.mlp.out"]
    r1_0 = _rows(ws["blocks.1.attn.o"]) @ u.double()
    with ablate_(model, u, attn=attn, mlp=mlp) as h:
        assert h.names == expected
        changed = {id(p) for p, s0 in zip(params, snap) if not torch.equal(p, s0)}
        allowed = {id(p) for n in expected for p in ws[n].module.parameters()}  # weight + bias
        assert {id(ws[n].module.weight) for n in expected} <= changed <= allowed
        # partial weight: the component along u shrinks by exactly (1 - w)
        r1 = _rows(ws["blocks.1.attn.o"]) @ u.double()
        torch.testing.assert_close(r1, 0.5 * r1_0, rtol=1e-5, atol=1e-7)
        r2 = _rows(ws["blocks.2.mlp.out"]) @ u.double()
        assert float(r2.abs().max()) > 1e-4  # weight 0.8: reduced, not removed
    assert all(torch.equal(p, s0) for p, s0 in zip(params, snap))


def test_per_layer_and_fractional_directions(model):
    dirs = torch.stack([_unit(32, s) for s in (5, 6, 7)])
    with ablate_(model, layer_directions=dirs):
        ws = {w.name: w for w in find_writers(model)}
        for layer in range(3):
            rows = _rows(ws[f"blocks.{layer}.mlp.out"])
            assert float((rows @ dirs[layer].double()).abs().max()) < 1e-5
            other = dirs[(layer + 1) % 3].double()
            assert float((rows @ other).abs().max()) > 1e-3
    v = interpolate(dirs, 1.5).double()
    with ablate_(model, layer_directions=dirs, direction_index=1.5):
        for w in find_writers(model, ["attn", "mlp"]):
            assert float((_rows(w) @ v).abs().max()) < 1e-5
    with pytest.raises(ConfigError):
        ablate_(model, dirs[0], layer_directions=dirs)
    with pytest.raises(ConfigError):
        ablate_(model, dirs[0], direction_index=0.5)
    with pytest.raises(ShapeError):
        ablate_(model, layer_directions=dirs[:2])


# --- Pareto search ----------------------------------------------------------------------

def test_pareto_mask():
    v = [[0, 3], [1, 1], [3, 0], [2, 2], [1, 1], [0, 4]]
    assert pareto_mask(v).tolist() == [True, True, True, False, True, False]
    with pytest.raises(NonFiniteError):
        pareto_mask([[0, float("nan")]])


def test_search_front_is_non_dominated_and_beats_no_edit():
    def evaluate(p):  # trade-off: stronger edit -> lower target rate, higher cost
        s = p["strength"]
        return {"target_rate": 1.0 - s,
                "kl": s ** 2 * (1.0 if p["mode"] == "good" else 3.0) + 0.1 * p["noise"]}

    space = {"strength": (0.0, 1.0), "mode": ["good", "bad"], "noise": (0.0, 1.0), "fixed": 3}
    df = pareto_search(evaluate, space, n_trials=40, seed=0,
                       baseline={"target_rate": 1.0, "kl": 0.0})
    fr = front(df)
    vals = df[["target_rate", "kl"]].to_numpy()
    for _, r in fr.iterrows():
        assert not ((vals <= [r.target_rate, r.kl]).all(1) & (vals < [r.target_rate, r.kl]).any(1)).any()
    assert (fr.target_rate < 1.0).any() and fr.target_rate.min() < 0.2
    assert (df.fixed.dropna() == 3).all() and len(df) == 41
    # mutation phase concentrates on the good mode's cheap corner (front is mostly "good")
    assert (fr[fr.trial >= 0]["mode"] == "good").mean() > 0.8
    fig = plot_front(df)
    assert len(fig.axes[0].lines) == 1
    with pytest.raises(ConfigError):
        pareto_search(lambda p: {"kl": 0.0}, space, n_trials=2)
    with pytest.raises(ConfigError):
        pareto_search(evaluate, {"x": (1.0, 0.0)}, n_trials=2)


def test_toyworld_search_returns_front_better_than_no_edit():
    from mechunlearn import toyworld
    from mechunlearn.studies.ablation_search import search_toyworld

    world = toyworld.load("tiny")
    before = {n: p.detach().clone() for n, p in world.model.original_model.named_parameters()}
    df = search_toyworld(world, n_trials=10, seed=0, methods=("mean",), max_new_tokens=12)
    base = df[df.trial == -1].iloc[0]
    assert base.target_rate > 0.8 and base.kl == 0.0
    fr = front(df)
    assert (fr.target_rate < base.target_rate - 0.3).any()
    assert all(torch.equal(before[n], p) for n, p in world.model.original_model.named_parameters())
