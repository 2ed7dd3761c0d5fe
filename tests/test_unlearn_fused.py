"""The unlearning loop's fused tanh-GELU fast path (:mod:`mechunlearn.unlearn.fused`), the
stop metric's target-aware confirm, and the cheaper stop checks of the loop and of selective
forgetting."""

from __future__ import annotations

import warnings

import pytest
import torch
from _unlearn_helpers import FORGET, RETAIN, retain_batch

from mechunlearn import fastpath
from mechunlearn.errors import FastPathMismatchWarning
from mechunlearn.unlearn import UnlearnConfig, selective_forget, unlearn
from mechunlearn.unlearn.fused import FusedTanhGELU, fused_gelu
from mechunlearn.unlearn.reference import forward

pytestmark = pytest.mark.usefixtures("one_thread")



def _acts(model):
    return [type(m).__name__ for m in model.modules()
            if type(m).__name__ in ("NewGELUActivation", "FusedTanhGELU")]


def test_fused_gelu_swaps_checks_and_restores(tiny_bridge):
    ids, am = retain_batch(tiny_bridge)
    before = _acts(tiny_bridge)
    assert before and set(before) == {"NewGELUActivation"}
    with torch.no_grad():
        ref = forward(tiny_bridge, ids, am)[0]
    fastpath.reset()
    with fused_gelu(tiny_bridge, ids, am, forward) as on:
        assert on is True
        assert set(_acts(tiny_bridge)) == {"FusedTanhGELU"}  # the swap took effect
        with torch.no_grad():
            fast = forward(tiny_bridge, ids, am)[0]
    assert any(k.startswith("unlearn.fused_gelu:") and v for k, v in fastpath.status().items())
    assert _acts(tiny_bridge) == before  # restored on exit
    assert torch.allclose(fast, ref, atol=1e-5)
    x = torch.linspace(-4, 4, 101)
    from transformers.activations import NewGELUActivation

    assert torch.allclose(FusedTanhGELU()(x), NewGELUActivation()(x), atol=1e-6)


def test_fused_gelu_restores_on_error_and_falls_back_on_mismatch(tiny_bridge, monkeypatch):
    ids, am = retain_batch(tiny_bridge)
    before = _acts(tiny_bridge)
    fastpath.reset()
    with pytest.raises(RuntimeError, match="boom"):
        with fused_gelu(tiny_bridge, ids, am, forward):
            raise RuntimeError("boom")
    assert _acts(tiny_bridge) == before
    fastpath.reset()
    import mechunlearn.unlearn.fused as fused

    monkeypatch.setattr(fused, "close", lambda a, b: (False, 1.0))
    with pytest.warns(FastPathMismatchWarning, match="fused tanh-GELU"):
        with fused_gelu(tiny_bridge, ids, am, forward) as on:
            assert on is False
            assert _acts(tiny_bridge) == before  # the reference path: nothing swapped
    fastpath.reset()


def test_loop_checks_the_stop_metric_in_the_forget_phase_only(tiny_bridge):
    calls = []

    def metric(m):
        calls.append(1)
        return 0.0  # at target on the first check

    cfg = UnlearnConfig(steps=10, repair_steps=4, lr=1e-3, eval_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = unlearn(tiny_bridge, FORGET, RETAIN, "flip", cfg, forget_metric=metric,
                    progress=False)
    r.undo()
    assert r.stopped == "target" and r.steps == 6  # 2 forget steps + 4 repair
    assert len(calls) == 1  # the repair evaluations (steps 4 and 6) did not call it
    ev = r.history.dropna(subset=["retain_kl_eval"])
    assert len(ev) == 3 and ev.forget_metric.isna().sum() == 2


def test_selective_stops_on_the_metric_target_without_another_round(tiny_bridge):
    from mechunlearn.studies.data import TrainPair

    train = [TrainPair(f"f{i}", p, b, g) for i, (p, b, g) in enumerate(FORGET)] + [
        TrainPair(f"r{i}", p, r, " no") for i, (p, r) in enumerate(RETAIN)]
    finds, attrs, values = [], [], iter([0.5, 0.04])  # round 0's loop, then before round 1

    def find_bad(m):
        finds.append(1)
        return [("the quick", " brown fox")]  # still "bad" by this (expensive) check

    cfg = UnlearnConfig(steps=2, repair_steps=0, eval_every=2, target=0.05)
    res = selective_forget(tiny_bridge, train, find_bad, lambda m, q: (attrs.append(1), [0])[1],
                           "flip", cfg, max_rounds=3, forget_metric=lambda m: next(values))
    res.undo()
    assert res.stopped == "target"  # 0.04 <= 0.05, though find_bad still finds one
    assert (len(finds), len(attrs)) == (1, 1)  # no second decode/attribution round
    assert list(res.rounds["round"]) == [0, 1]
    assert res.rounds["forget_metric"].iloc[-1] == pytest.approx(0.04)


def test_bad_answer_tracker_confirms_a_lower_bound_at_or_below_target(tiny_bridge):
    from mechunlearn.studies.format import raw
    from mechunlearn.studies.stopping import BadAnswerTracker
    from mechunlearn.studies.verify import generate

    fmt = raw()
    prompts = ["the quick", "over the", "a brown"]
    answers = generate(tiny_bridge, fmt, prompts, 6)[0]
    bad = {answers[0]}
    strict = BadAnswerTracker(fmt, lambda r: r in bad, prompts, 6, target=0.0)
    loose = BadAnswerTracker(fmt, lambda r: r in bad, prompts, 6, target=0.5)
    for tr in (strict, loose):
        assert tr(tiny_bridge) == pytest.approx(1 / 3) and tr.n_decodes == 1
        assert tr(tiny_bridge) == pytest.approx(1 / 3)
    assert strict.n_decodes == 1  # 1/3 > 0: the teacher-forced lower bound suffices
    assert loose.n_decodes == 2  # 1/3 <= 0.5: a lower bound cannot say "at target": decode
