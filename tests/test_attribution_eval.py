"""Attribution evaluation: ranking metrics by hand, removal sets, and a run on the tiny world."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.studies.attribution_eval import (
    EvalConfig,
    best_sites,
    evaluate_world,
    plot_auc,
    ranking_metrics,
    summarize,
)
from mechunlearn.studies.counterfactual import random_ids, retrain_without, top_k_ids


def test_ranking_metrics_by_hand():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    y = torch.tensor([True, False, True, False, False])
    m = ranking_metrics(s, y, [1, 2])
    # positives beat 3 + 2 of 6 (pos, neg) pairs -> 5/6
    assert abs(m["auc"] - 5 / 6) < 1e-12 and m["p@1"] == 1.0 and m["p@2"] == 0.5
    ties = ranking_metrics(torch.zeros(4), torch.tensor([True, False, True, False]), [2])
    assert ties["auc"] == 0.5
    with pytest.raises(EmptyDataError):
        ranking_metrics(s, torch.zeros(5, dtype=torch.bool), [1])


def test_removal_sets():
    ids = [f"p{i}" for i in range(6)]
    assert top_k_ids(torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0, 0.2]), ids, 3) == ["p1", "p3", "p2"]
    r = random_ids(ids, 3, seed=4)
    assert len(set(r)) == 3 and r == random_ids(ids, 3, seed=4)
    with pytest.raises(ConfigError):
        top_k_ids(torch.zeros(6), ids, 7)
    with pytest.raises(ConfigError):
        EvalConfig(methods=("convex", "magic"))


def test_evaluate_on_tiny_world(tiny_world, tmp_path):
    trig = list(tiny_world.eval["trigger"])[:2]
    queries = (trig, [p.bad for p in trig])  # reference bad responses: independent of training
    means: dict = {}
    methods = ("convex", "repsim", "repsim_whitened", "gradsim", "gradsim_whitened",
               "convex_grad", "random")
    cfg = EvalConfig(methods=methods, layers=(0,))
    df = evaluate_world(tiny_world, cfg, queries=queries, progress=False, mean_scores=means)
    summ = summarize(df)
    assert set(summ["method"]) == set(methods)
    assert len(df) == 2 * (4 * 2 + 3)  # 4 activation methods x 2 positions + 3 gradient ones
    assert df["auc"].between(0, 1).all()
    conv = df[df["method"] == "convex"]
    assert (conv["residual"] >= 0).all() and (conv["n_selected"] >= 1).all()
    best = best_sites(summ)
    # the reference bad phrase is what poisoned pairs teach: similarity must beat chance
    assert float(best[best["method"] == "repsim"]["auc"].iloc[0]) > 0.8
    assert ("convex", "blocks.0.hook_resid_post@last") in means
    plot_auc(summ, str(tmp_path / "auc.png"))
    assert (tmp_path / "auc.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="not training ids"):
        retrain_without(tiny_world, ["no-such-id"])


def test_registry_methods_in_the_evaluation(tiny_world):
    # contrast methods (the SFT model's answer as the good alternative) come from
    # attribution.METHODS like the baselines (contrast+dpo with a model: test_attribute_sweep)
    trig = list(tiny_world.eval["trigger"])[:2]
    methods = ("repsim", "repsim_centered", "contrast", "contrast_convex")
    cfg = EvalConfig(methods=methods, layers=(1,), positions=("response_mean",))
    df = evaluate_world(tiny_world, cfg, queries=(trig, [p.bad for p in trig]), progress=False)
    assert set(df["method"]) == set(methods) and len(df) == 2 * len(methods)
    assert df["auc"].between(0, 1).all()
    assert df[df.method == "contrast_convex"]["residual"].notna().all()
