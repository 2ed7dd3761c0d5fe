"""Erasure report and edits that hold downstream (mechunlearn.erasure)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mechunlearn.directions import NoEvidenceWarning
from mechunlearn.erasure import (
    WeightEdit,
    covariance_directions,
    edited_features,
    erasure_report,
    fit_erasure,
    fit_sites,
    mean_difference,
    neutral_cost,
    plot_erasure,
    probe_accuracy,
)
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError
from mechunlearn.interventions import Project
from mechunlearn.sites import resid

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "quick", "brown", "jumps", "over", "lazy"]


def _texts(word: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = list(rng.choice(WORDS, size=int(rng.integers(5, 9))))
        w.insert(int(rng.integers(0, len(w) + 1)), word)
        out.append(" ".join(w))
    return out


@pytest.fixture(scope="module")
def fox_dog():
    """A token concept (fox vs dog somewhere in the sentence): train and test contrasts."""
    train = (_texts("fox", 80, 0), _texts("dog", 80, 1))
    test = (_texts("fox", 80, 2), _texts("dog", 80, 3))
    return train, test


def _planted_variance(n: int, seed: int, d: int = 16):
    """Class 1 is shifted along e0 and has 10x the spread along e1: after the mean difference
    is projected out, only a non-linear probe can read |x1|."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    X = rng.normal(size=(2 * n, d))
    X[:, 0] += np.where(y == 1, 1.0, -1.0)
    X[:, 1] *= np.where(y == 1, 3.0, 0.3)
    return X, y


def test_linear_edit_leaves_planted_nonlinear_concept_to_mlp_and_covariance_directions_remove_it():
    X, y = _planted_variance(300, 0)
    Xt, yt = _planted_variance(300, 1)
    assert probe_accuracy(X, y, Xt, yt, "linear") > 0.75         # raw: linear reads it
    u = mean_difference(X, y)

    def proj(A, B):
        return A - (A @ B.T) @ B

    B1 = u[None]
    lin1 = probe_accuracy(proj(X, B1), y, proj(Xt, B1), yt, "linear")
    mlp1 = probe_accuracy(proj(X, B1), y, proj(Xt, B1), yt, "mlp")
    assert lin1 < 0.6 and mlp1 > 0.75                             # linear edit: MLP still reads it
    C = covariance_directions(proj(X, B1), y, k=1)
    assert abs(C[0, 1]) > 0.9                                     # finds the variance direction
    B2 = np.linalg.qr(np.vstack([B1, C]).T)[0].T
    assert probe_accuracy(proj(X, B2), y, proj(Xt, B2), yt, "mlp") < 0.6


def test_concept_recomputed_downstream_and_multi_site_edit_holds(tiny_bridge, fox_dog):
    train, test = fox_dog
    sites = [resid(0, "post", "mean"), resid(1, "post", "mean")]
    x = train[0] + train[1]
    y = np.r_[np.ones(80), np.zeros(80)].astype(int)
    X0 = edited_features(tiny_bridge, None, x, sites[:1])[sites[0]]
    one_site = Project(torch.from_numpy(mean_difference(X0, y)[None]), site=sites[0])
    multi = fit_sites(tiny_bridge, train, sites)
    df = erasure_report(tiny_bridge, {"layer0": one_site, "multi": multi}, train, test,
                        sites=sites, neutral=_texts("cat", 12, 9))
    acc = df.set_index(["edit", "layer"])["linear_acc"]
    assert acc["none", 0] > 0.9 and acc["none", 1] > 0.9        # the concept is there
    assert acc["layer0", 0] < 0.6                                 # gone where it was edited ...
    assert acc["layer0", 1] > 0.7                                 # ... recomputed by layer 1
    assert acc["multi", 0] < 0.6 and acc["multi", 1] < 0.6        # every later layer edited
    cost = df.groupby("edit")["kl"].first()
    assert cost["none"] == pytest.approx(0.0, abs=1e-6) and cost["multi"] > 1e-4
    assert df.attrs["evidence"] is True
    assert set(df.columns) >= {"mlp_acc", "linear_p", "emb_dist", "sim_spearman", "n_directions"}
    fig = plot_erasure(df)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 3


def test_fit_erasure_history_and_targets(tiny_bridge, fox_dog):
    train, test = fox_dog
    sites = [resid(0, "post", "mean"), resid(1, "post", "mean")]
    fit = fit_erasure(tiny_bridge, train, sites, max_rounds=2, quadratic_k=2)
    h = fit.history
    assert h["round"].iloc[0] == 0 and h["round"].iloc[-1] == "closure"
    assert (h["added"] >= 0).all()
    assert all(b.shape[1] == 32 for b in fit.bases.values()) and len(fit.bases) == 2
    df = erasure_report(tiny_bridge, {"fit": fit.edit}, train, test, sites=sites,
                        probes=("linear",))
    assert (df[df.edit == "fit"]["linear_acc"] < 0.6).all()
    assert (df[df.edit == "none"]["linear_acc"] > 0.9).all()


def test_null_contrast_reports_no_evidence(tiny_bridge):
    rng = np.random.default_rng(0)
    texts = _texts("fox", 120, 5) + _texts("dog", 120, 6)
    perm = rng.permutation(240)  # labels independent of the text
    t = [texts[i] for i in perm]
    train, test = (t[:60], t[60:120]), (t[120:180], t[180:])
    with pytest.warns(NoEvidenceWarning):
        df = erasure_report(tiny_bridge, {}, train, test, sites=[resid(1, "post", "mean")])
    assert df.attrs["evidence"] is False
    assert list(df.edit.unique()) == ["none"]


def test_weight_edit_costs_kl_and_is_undone(tiny_bridge):
    u = torch.randn(32, generator=torch.Generator().manual_seed(0))  # unseeded: KL 9e-5 once
    before = {k: v.clone() for k, v in tiny_bridge.original_model.state_dict().items()}
    out = neutral_cost(tiny_bridge, WeightEdit(u), _texts("cat", 8, 4))
    assert out["kl"] > 1e-4 and out["emb_dist"] > 1e-4
    after = tiny_bridge.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_inputs_raise_typed_errors(tiny_bridge, fox_dog):
    train, test = fox_dog
    X = np.random.default_rng(0).normal(size=(20, 4))
    y = np.r_[np.ones(10), np.zeros(10)]
    with pytest.raises(ConfigError):
        probe_accuracy(X, y, X, y, kind="svm")
    with pytest.raises(EmptyDataError):
        probe_accuracy(X, np.ones(20), X, y)
    with pytest.raises(ShapeError):
        probe_accuracy(X, y[:5], X, y)
    with pytest.raises(ConfigError):
        erasure_report(tiny_bridge, {"bad": "project"}, train, test, sites=[resid(0)])
    with pytest.raises(ConfigError):
        erasure_report(tiny_bridge, {}, train, test, probes=("quadratic",))
    with pytest.raises(EmptyDataError):
        erasure_report(tiny_bridge, {}, (["a"], ["b"]), test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError):
            fit_sites(tiny_bridge, train, [resid(0)], finder="pca")
