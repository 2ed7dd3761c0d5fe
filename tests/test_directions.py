"""Direction finders: planted directions are found, null data says so, bad input raises."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mechunlearn.directions import (
    Directions,
    NoEvidenceWarning,
    RankDeficientError,
    bias_ratios,
    ccs,
    leace,
    mean_diff,
    pca_bias,
    probe,
)
from mechunlearn.errors import ConfigError, EmptyDataError, NonFiniteError, ShapeError
from mechunlearn.features import Features
from mechunlearn.sites import resid

torch.set_num_threads(1)
FAST = {"n_permutations": 19, "n_splits": 3}


def planted(n: int = 120, d: int = 16, gap: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    noise_p, noise_n = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    return noise_p + gap / 2 * w, noise_n - gap / 2 * w, w


def cos(a, w) -> float:
    return float(np.asarray(a, dtype=np.float64) @ w)


@pytest.mark.parametrize("finder", [pca_bias, mean_diff, probe, leace])
def test_finder_recovers_planted_direction(finder):
    xp, xn, w = planted()
    d = finder(torch.tensor(xp), torch.tensor(xn), **FAST)
    assert isinstance(d, Directions) and d.k == 1 and d.d == 16
    assert cos(d.direction, w) > 0.85  # oriented: X+ side positive
    assert d.scores["heldout_auc"] > 0.8
    assert d.significant is True and d.p_value == pytest.approx(1 / 20)
    assert d.scores["mean_diff"][0] > 0


def test_pca_ratio_ranks_planted_biased_component_first():
    """Planted: a low-variance biased component and high-variance unbiased ones."""
    rng = np.random.default_rng(1)
    n, d = 200, 10
    scales = np.array([5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.2, 1.0, 0.9, 0.8])
    xp = rng.normal(size=(n, d)) * scales
    xn = rng.normal(size=(n, d)) * scales
    xp[:, 6] += 1.2
    xn[:, 6] -= 1.2
    d_ = pca_bias(xp, xn, k=3, **FAST)
    assert abs(d_.direction[6]) > 0.95
    assert d_.scores["ratio"] == sorted(d_.scores["ratio"], reverse=True)
    # the biased component is not the top-variance one: plain PCA would miss it
    assert d_.scores["component"][0] != 0


def test_literal_ratio_is_fooled_by_tiny_variance_component():
    """The seed's literal mean/var ratio prefers a near-null component (units 1/scale)."""
    rng = np.random.default_rng(2)
    n, d = 200, 6
    xp = rng.normal(size=(n, d))
    xn = rng.normal(size=(n, d))
    xp[:, 0] += 1.0
    xn[:, 0] -= 1.0
    xp[:, 5] = 1e-2 * rng.normal(size=n) + 2e-3  # tiny variance, tiny mean offset
    xn[:, 5] = 1e-2 * rng.normal(size=n) - 2e-3
    lit = pca_bias(xp, xn, ratio="literal", n_permutations=0, n_splits=3)
    sf = pca_bias(xp, xn, ratio="scale_free", n_permutations=0, n_splits=3)
    assert abs(lit.direction[5]) > 0.9
    assert abs(sf.direction[0]) > 0.9


def test_bias_ratio_is_sign_and_scale_free():
    xp, xn, w = planted()
    X = np.concatenate([xp, xn])
    y = np.r_[np.ones(len(xp), bool), np.zeros(len(xn), bool)]
    comps = np.eye(16)[:4]
    r = bias_ratios(X, y, comps)
    r_flip = bias_ratios(X, y, -comps)
    r_scaled = bias_ratios(10 * X, y, comps)
    np.testing.assert_allclose(r["scale_free"], r_flip["scale_free"])
    np.testing.assert_allclose(r["scale_free"], r_scaled["scale_free"], rtol=1e-9)
    np.testing.assert_allclose(r["literal"], r_scaled["literal"] * 10, rtol=1e-9)


def test_ccs_finds_planted_direction():
    """Burns-style data: latent truth t flips the sign of w between the pair halves."""
    rng = np.random.default_rng(3)
    n, d = 150, 12
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    t = rng.random(n) < 0.5
    base = rng.normal(size=(n, d))
    s = np.where(t, 1.0, -1.0)[:, None]
    yes_offset, no_offset = rng.normal(size=d) * 3, rng.normal(size=d) * 3
    a = base + yes_offset + 1.5 * s * w + 0.3 * rng.normal(size=(n, d))
    b = base + no_offset - 1.5 * s * w + 0.3 * rng.normal(size=(n, d))
    res = ccs(a, b, labels=t, n_permutations=19, n_splits=2, epochs=100, lr=0.2, n_restarts=4)
    assert cos(res.direction, w) > 0.9
    assert res.scores["heldout_auc"] > 0.9 and res.significant is True
    assert res.scores["loss"][0] == min(res.scores["restart_losses"])


def test_ccs_bias_mode_on_reinforced_vs_discouraged_pairs():
    xp, xn, w = planted(n=100, gap=3.0)
    res = ccs(xp, xn, n_permutations=0, n_splits=2, epochs=100, lr=0.2)
    assert cos(res.direction, w) > 0.8
    assert res.scores["heldout_auc"] > 0.8


@pytest.mark.parametrize("finder", [mean_diff, pca_bias, probe])
def test_null_case_is_reported_as_not_significant(finder):
    """Labels independent of features: no spurious direction is claimed."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 16))
    y = rng.random(120) < 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = finder(X, labels=y, n_permutations=19, n_splits=3)
    assert d.significant is False
    assert 0.35 < d.scores["heldout_auc"] < 0.65
    assert any(issubclass(c.category, NoEvidenceWarning) for c in caught)
    assert d.scores["train_auc"][0] > d.scores["heldout_auc"]  # overfit on its own data


def test_grouped_heldout_evaluation_runs():
    xp, xn, w = planted(n=60)
    groups = np.r_[np.arange(60) // 6, np.arange(60) // 6]
    d = mean_diff(xp, xn, groups=groups, **FAST)
    assert d.settings["grouped"] is True and d.scores["heldout_auc"] > 0.8


def test_too_few_permutations_is_undetermined():
    xp, xn, _ = planted()
    with pytest.warns(NoEvidenceWarning, match="undetermined"):
        d = mean_diff(xp, xn, n_permutations=5, n_splits=3)
    assert d.significant is None


def test_leace_matches_concept_erasure():
    from concept_erasure import LeaceEraser

    xp, xn, _ = planted(d=8)
    X = torch.tensor(np.concatenate([xp, xn]))
    z = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))]).double()
    ours = leace(xp, xn, n_permutations=0, n_splits=3).eraser
    theirs = LeaceEraser.fit(X, z)
    torch.testing.assert_close(ours(X), theirs(X), atol=1e-9, rtol=1e-9)


def test_leace_handles_near_constant_dims():
    xp, xn, w = planted(d=8)
    xp[:, 3] = 1e-30 * np.random.default_rng(0).normal(size=len(xp))
    xn[:, 3] = 1e-30
    d = leace(xp, xn, n_permutations=0, n_splits=3)
    X = torch.tensor(np.concatenate([xp, xn]))
    out = d.eraser(X)
    torch.testing.assert_close(out[:, 3], X[:, 3])
    erased = out.numpy()
    gap = erased[: len(xp)].mean(0) - erased[len(xp):].mean(0)
    assert np.abs(gap).max() < 1e-8  # class means equal after erasure = no linear info


def test_features_input_carries_site():
    xp, xn, _ = planted()
    site = resid(1)
    fp = Features(torch.tensor(xp, dtype=torch.float32), tuple(map(str, range(len(xp)))), site, "x")
    fn = Features(torch.tensor(xn, dtype=torch.float32), tuple(map(str, range(len(xn)))), site, "x")
    assert mean_diff(fp, fn, n_permutations=0, n_splits=3).site == site


def test_directions_save_load_and_dict_roundtrip(tmp_path):
    xp, xn, _ = planted(d=8)
    d = leace(xp, xn, site=resid(0), n_permutations=0, n_splits=3)
    back = Directions.load(d.save(tmp_path / "dirs"))
    torch.testing.assert_close(back.basis, d.basis)
    torch.testing.assert_close(back.eraser.proj_left, d.eraser.proj_left)
    assert back.site == d.site and back.method == "leace"
    assert back.scores["heldout_auc"] == d.scores["heldout_auc"]
    again = Directions.from_dict(d.to_dict())
    torch.testing.assert_close(again.basis, d.basis)
    assert again.settings == d.settings


def test_directions_basis_is_orthonormalised():
    d = Directions(torch.tensor([[3.0, 0, 0], [1.0, 1.0, 0]]))
    torch.testing.assert_close(d.basis @ d.basis.T, torch.eye(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(d.basis[0], torch.tensor([1.0, 0, 0]))


@pytest.mark.parametrize(
    "basis,err",
    [
        (torch.zeros(1, 4), ShapeError),
        (torch.tensor([[1.0, 0], [2.0, 0]]), RankDeficientError),
        (torch.ones(3, 2), RankDeficientError),
        (torch.tensor([[float("nan"), 1.0]]), NonFiniteError),
        (torch.ones(2, 2, 2), ShapeError),
    ],
)
def test_bad_bases_raise(basis, err):
    with pytest.raises(err):
        Directions(basis)


def test_bad_finder_inputs_raise():
    xp, xn, _ = planted(d=4)
    with pytest.raises(EmptyDataError):
        mean_diff(xp, xn[:1])
    with pytest.raises(EmptyDataError):
        mean_diff(xp[:0], xn)
    with pytest.raises(ShapeError):
        mean_diff(xp, xn[:, :3])
    bad = xp.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        probe(bad, xn)
    with pytest.raises(ConfigError):
        pca_bias(xp, xn, ratio="wrong")
    with pytest.raises(ConfigError):
        mean_diff(xp)
    with pytest.raises(ShapeError):
        ccs(xp, xn[:-1])
    with pytest.raises(ShapeError):
        mean_diff(xp, labels=np.ones(3))


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from mechunlearn.directions.evidence import auc

    rng = np.random.default_rng(5)
    for _ in range(10):
        s = rng.integers(0, 4, size=40).astype(float)
        y = rng.random(40) < 0.4
        assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_feature_store_input(tmp_path):
    from mechunlearn.store import FeatureStore

    xp, xn, w = planted(d=8)
    stores = []
    for name, x in (("pos", xp), ("neg", xn)):
        st = FeatureStore.create(tmp_path / name, resid(0), "fp", 8)
        st.append(torch.tensor(x, dtype=torch.float32), [f"{name}{i}" for i in range(len(x))])
        st.flush()
        stores.append(FeatureStore.open(tmp_path / name))
    d = mean_diff(*stores, n_permutations=0, n_splits=3)
    assert d.site == resid(0) and cos(d.direction, w) > 0.9
