"""SEAL metrics on hand-built cases: resistance, imprint, robustness, labelers, report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.seal import (
    PreferencePair,
    ProbeLabeler,
    RewardModel,
    SealReport,
    SiteMismatchError,
    activation_robustness,
    alignment_resistance,
    default_labelers,
    feature_imprint,
    label,
    most_resistant,
    pair_features,
    resistance_by_feature,
    text_robustness,
    write_report,
)
from mechunlearn.seal.labelers import refusal, sentiment
from mechunlearn.seal.robustness import add_polite, lengthen, rephrase_refusal
from mechunlearn.sites import Site


def test_resistance_hand_built():
    r = alignment_resistance(torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 3.0, 0.0, 1.0]))
    assert (r.resistance, r.agreement, r.ties, r.n) == (0.25, 0.5, 0.25, 4)
    with pytest.raises(ShapeError):
        alignment_resistance([1.0, 2.0], [1.0])


def test_resistance_by_feature_groups():
    rc = np.array([1.0, 0.0, 0.0, 1.0])
    rr = np.array([0.0, 1.0, 1.0, 0.0])
    lc = pd.DataFrame({"length": [5, 1, 1, 3]})
    lr = pd.DataFrame({"length": [1, 5, 5, 3]})
    t = resistance_by_feature(rc, rr, lc, lr, {"length": "spoiler"}).set_index("group")
    assert t.loc["chosen_more", "resistance"] == 0.0 and t.loc["chosen_more", "n"] == 1
    assert t.loc["rejected_more", "resistance"] == 1.0 and t.loc["rejected_more", "n"] == 2
    assert t.loc["equal", "agreement"] == 1.0 and (t["kind"] == "spoiler").all()


def test_most_resistant_order():
    pairs = [PreferencePair("p", f"c{i}", f"r{i}", f"id{i}") for i in range(4)]
    df = most_resistant(pairs, [0.0, 0.0, 0.0, 1.0], [1.0, 3.0, -1.0, 2.0], k=5)
    assert list(df["id"]) == ["id1", "id0", "id3"] and df["margin"].iloc[0] == 3.0


def test_imprint_recovers_planted_coefficients():
    rng = np.random.default_rng(0)
    n = 300
    lc = pd.DataFrame({"polite": rng.integers(0, 2, n), "length": rng.normal(50, 10, n),
                       "const": np.ones(n)})
    lr = pd.DataFrame({"polite": rng.integers(0, 2, n), "length": rng.normal(50, 10, n),
                       "const": np.ones(n)})
    def rm(df):
        return 0.5 + 2.0 * df["polite"] - 0.1 * df["length"] + rng.normal(0, 0.1, n)
    rc, rr = rm(lc).to_numpy(), rm(lr).to_numpy()
    raw = feature_imprint(rc, rr, lc, lr, n_boot=200, seed=0, standardize=False)
    for target in ("score", "reward_diff"):
        t = raw[raw["target"] == target].set_index("feature")
        assert "const" not in t.index
        assert abs(t.loc["polite", "coef"] - 2.0) < 0.05 and abs(t.loc["length", "coef"] + 0.1) < 0.01
        assert t.loc["polite", "ci_low"] < 2.0 < t.loc["polite", "ci_high"]
        assert t.loc["length", "p_boot"] < 0.01
    std = feature_imprint(rc, rr, lc, lr, n_boot=0).set_index(["target", "feature"])
    both = np.concatenate([lc["length"], lr["length"]])
    assert abs(std.loc[("score", "length"), "coef"] + 0.1 * both.std()) < 0.02
    assert abs(std.loc[("score", "polite"), "coef"] - 2.0) < 0.05  # binary kept as 0/1
    assert np.isnan(std["ci_low"]).all()
    again = feature_imprint(rc, rr, lc, lr, n_boot=50, seed=3)
    assert again.equals(feature_imprint(rc, rr, lc, lr, n_boot=50, seed=3))


def test_labelers_and_label_frame():
    assert refusal("I\u2019m sorry, I can\u2019t help with that.") == 1.0
    assert refusal("Sure, here is how.") == 0.0
    assert sentiment("good great bad") == pytest.approx(1 / 3)
    df = label(["I'm sorry, I can't.", "Try this: you can kill the process. Thanks!"])
    assert list(df.columns) == [lab.name for lab in default_labelers()]
    assert df.loc[1, "harmless"] == 0.0 and df.loc[0, "harmless"] == 1.0
    assert df.loc[1, "politeness"] >= 1 and df.loc[1, "helpfulness"] >= 2
    custom = label(["a b", "a"], {"n": lambda t: len(t)})
    assert custom["n"].tolist() == [3.0, 1.0]


def test_text_perturbations():
    assert add_polite("Yes.").endswith("thank you for asking!")
    assert lengthen("Go left. Then right.") == "Go left. Then right. In other words, go left."
    assert rephrase_refusal("I\u2019m sorry, but I can\u2019t do that.") == "I'm not able to do that."
    assert rephrase_refusal("Sure thing.") == "Sure thing."


def test_text_robustness_with_length_scorer():
    pairs = [PreferencePair("p", "a b c d e f", "a b", "0"),
             PreferencePair("p", "a b c", "I can't", "1")]
    def score(items):
        return torch.tensor([float(len(r.split())) for _, r in items])
    rc, rr = score([(p.prompt, p.chosen) for p in pairs]), score([(p.prompt, p.rejected) for p in pairs])
    df = text_robustness(score, pairs, rc, rr).set_index(["perturbation", "side"])
    polite = df.loc[("add_polite", "rejected")]
    assert polite["n_changed"] == 2 and polite["flip_rate"] == 1.0  # +8 words beats the chosen
    assert polite["agreement_before"] == 1.0 and polite["agreement_after"] == 0.0
    assert df.loc[("add_polite", "chosen"), "flip_rate"] == 0.0
    refuse = df.loc[("rephrase_refusal", "rejected")]
    assert refuse["n_changed"] == 1 and refuse["flip_rate"] == 1.0  # "I'm not able to" is longer


def _pairs(n: int) -> list[PreferencePair]:
    return [PreferencePair("the quick", " brown fox" if i % 2 else " fox",
                           " lazy dog" if i % 3 else " dog", f"q{i}") for i in range(n)]


def test_probe_labeler_and_activation_sweep(tiny_bridge):
    pairs = _pairs(12)
    rm = RewardModel.fit(tiny_bridge, pairs, max_length=16, l2=1.0)
    site0 = Site("blocks.0.hook_resid_post", "mean")
    u = torch.zeros(32)
    u[0] = 2.0
    probe = ProbeLabeler(tiny_bridge, u, site0, max_length=16)
    f = pair_features(tiny_bridge, pairs, site0, max_length=16)["chosen"][site0]
    assert np.allclose(probe.project(f), f.values[:, 0].numpy(), atol=1e-6)
    texts = [p.chosen for p in pairs[:3]]
    direct = pair_features(tiny_bridge, [PreferencePair("", t, t, str(i)) for i, t in
                                         enumerate(texts)], site0, max_length=16, sep="")
    assert np.allclose(probe(texts), direct["chosen"][site0].values[:, 0].numpy(), atol=1e-5)
    with pytest.raises(SiteMismatchError):
        probe.project(pair_features(tiny_bridge, pairs[:2], rm.site, 16)["chosen"][rm.site])
    rc, rr = rm.score_pairs(pairs)
    sites = {Site(f"blocks.{i}.hook_resid_post"): u for i in range(2)}
    zero = activation_robustness(rm, pairs, sites, "steer", alpha=0.0, r_chosen=rc, r_rejected=rr)
    assert list(zero["layer"]) == [0, 1] and (zero["flip_rate"] == 0).all()
    assert np.allclose(zero["mean_abs_delta"], 0.0, atol=1e-6)
    proj = activation_robustness(rm, pairs, sites, "project")
    assert (proj["mean_abs_delta"] > 0).all()
    with pytest.raises(ConfigError):
        activation_robustness(rm, pairs, {Site("blocks.1.hook_resid_post"): u}, "erase")


def test_write_report(tmp_path):
    rc, rr = np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0])
    lc = pd.DataFrame({"length": [3.0, 1.0, 2.0], "refusal": [0.0, 1.0, 0.0]})
    lr = pd.DataFrame({"length": [1.0, 2.0, 2.0], "refusal": [1.0, 0.0, 1.0]})
    sweep = pd.DataFrame([{"site": f"blocks.{i}", "layer": i, "mode": "project",
                           "agreement_before": 0.6, "agreement_after": 0.5 + 0.05 * i,
                           "flip_rate": 0.1, "mean_abs_delta": 0.2} for i in range(3)])
    rep = SealReport({"after": alignment_resistance(rc, rr)},
                     resistance_by_feature(rc, rr, lc, lr),
                     feature_imprint(rc, rr, lc, lr, n_boot=20),
                     activation_robustness=sweep, info={"model": "test"})
    out = write_report(rep, tmp_path / "rep")
    names = {p.name for p in out.iterdir()}
    assert {"summary.md", "imprint.png", "resistance_by_feature.png", "robustness_by_layer.png",
            "imprint.csv", "resistance.csv"} <= names
    text = (out / "summary.md").read_text()
    assert "0.667" in text and "model" in text


def test_probe_labeler_accepts_directions():
    from mechunlearn.directions.base import Directions

    site = Site("blocks.0.hook_resid_post", "mean")
    basis = torch.zeros(1, 4)
    basis[0, 2] = 1.0
    probe = ProbeLabeler(None, Directions(basis, site=site), threshold=0.5)
    assert probe.site == site
    from mechunlearn.features import Features

    f = Features(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.2, 9.0]]), ("a", "b"), site, "x")
    assert probe.project(f).tolist() == [1.0, 0.0]
    with pytest.raises(SiteMismatchError):
        ProbeLabeler(None, Directions(basis, site=site), Site("blocks.1.hook_resid_post"))
    with pytest.raises(ConfigError):
        ProbeLabeler(None, basis[0])  # a raw tensor needs its Site
    with pytest.raises(ConfigError):
        probe(["text"])  # no model to run
