"""sweep() over Sites and the layer plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn import features as feats_mod
from mechunlearn.directions import mean_diff
from mechunlearn.errors import ConfigError, UnknownHookError
from mechunlearn.plots import plot_layers
from mechunlearn.sites import Site, sites
from mechunlearn.sweep import sweep

torch.set_num_threads(1)
TEXTS_POS = ["the quick brown fox", "the lazy dog jumps", "quick quick fox", "the dog over the fox",
             "brown fox jumps over"]
TEXTS_NEG = ["over the lazy dog", "lazy lazy dog", "the brown dog", "dog jumps the fox",
             "the quick lazy dog"]


def test_sweep_over_all_site_kinds_one_forward_pass(tiny_bridge, monkeypatch):
    all_sites = sites(tiny_bridge, ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"))
    calls = []
    real = feats_mod.extract

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr("mechunlearn.sweep.extract", counting)

    def fn(site, f):
        return {"mean_norm": float(f["pos"].values.norm(dim=1).mean()), "d": f["neg"].d}

    df = sweep(tiny_bridge, all_sites, fn, {"pos": TEXTS_POS, "neg": TEXTS_NEG}, progress=False)
    assert len(calls) == 2  # one extraction per dataset, all sites at once
    assert len(df) == 10 and set(df["kind"]) == {"resid_pre", "resid_mid", "resid_post",
                                                "attn_out", "mlp_out"}
    assert sorted(df["layer"].unique()) == [0, 1] and (df["d"] == 32).all()

    calls.clear()
    df2 = sweep(tiny_bridge, all_sites[:3], fn, {"pos": TEXTS_POS, "neg": TEXTS_NEG},
                reuse_forward=False, progress=False)
    assert len(calls) == 6
    pd.testing.assert_series_equal(df2["mean_norm"], df["mean_norm"][:3], check_exact=False)


def test_sweep_without_data_and_multi_row(tiny_bridge):
    ss = sites(tiny_bridge, "resid_post")
    df = sweep(tiny_bridge, ss, lambda s: [{"method": "a", "v": s.layer}, {"method": "b", "v": 1}],
               progress=False)
    assert len(df) == 4 and list(df["v"]) == [0, 1, 1, 1]
    df = sweep(tiny_bridge, ss, lambda s: 3.0, progress=False)
    assert (df["value"] == 3.0).all()
    with pytest.raises(ConfigError):
        sweep(tiny_bridge, ss, lambda s: "bad", progress=False)
    with pytest.raises(UnknownHookError):
        sweep(tiny_bridge, [Site("blocks.9.hook_resid_post")], lambda s: 1.0)


@pytest.mark.filterwarnings("ignore::mechunlearn.directions.NoEvidenceWarning")
def test_sweep_directions_and_plot_with_null_band(tiny_bridge, tmp_path):
    def fn(site, f):
        d = mean_diff(f["pos"], f["neg"], n_permutations=9, n_splits=2)
        return {"method": "mean_diff", **{k: d.scores[k] for k in
                ("heldout_auc", "null_auc_q05", "null_auc_q95", "p_value")}}

    df = sweep(tiny_bridge, sites(tiny_bridge, "resid_post"), fn,
               {"pos": TEXTS_POS, "neg": TEXTS_NEG}, progress=False)
    fig = plot_layers(df, ["heldout_auc", "p_value"], null=("null_auc_q05", "null_auc_q95"),
                      chance=0.5, save=tmp_path / "out" / "fig.png")
    assert (tmp_path / "out" / "fig.png").stat().st_size > 1000
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) == 1  # one null band
    with pytest.raises(ConfigError):
        plot_layers(df, "nope")


def test_plot_without_hue():
    df = pd.DataFrame({"layer": [0, 1, 2], "kl": np.array([0.1, 0.2, 0.05])})
    fig = plot_layers(df, "kl", hue=None)
    assert len(fig.axes[0].lines) == 1
