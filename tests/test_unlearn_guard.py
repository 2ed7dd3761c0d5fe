"""The collateral-damage guard and forget-set screening (tiny GPT-2); the relearning attack is
tested in test_robustness.py."""

from __future__ import annotations

import pytest
from _unlearn_helpers import avg_logp as _avg_logp
from _unlearn_helpers import same as _same
from _unlearn_helpers import state as _state

from mechunlearn.errors import ConfigError
from mechunlearn.unlearn import UnlearnConfig, unlearn
from mechunlearn.unlearn.guard import Guard, GuardConfig, split_keep
from mechunlearn.unlearn.hygiene import screen_forget
from mechunlearn.unlearn.selective import selective_forget

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the quick brown fox jumps over the lazy dog".split()
FORGET = [("the quick", " brown fox", " lazy dog"), ("over the", " jumps over", " lazy dog")]
RETAIN = [(" ".join(WORDS[i:i + 2]), " " + " ".join(WORDS[i + 2:i + 4])) for i in range(0, 6)]
KEEP = [("lazy dog", " the quick"), ("brown fox", " jumps over")]



def test_guard_stops_and_rolls_back_when_kept_answers_change(tiny_bridge):
    # target met from the first evaluation; gradient ascent at a high lr keeps changing the
    # kept answers, so the guard must stop and end at an earlier, less damaged checkpoint
    cfg = UnlearnConfig(steps=40, repair_steps=20, lr=2e-2, eval_every=2,
                        guard=GuardConfig(patience=2, max_change=0.02))
    probe = Guard(tiny_bridge, KEEP, None, cfg.guard, [])
    res = unlearn(tiny_bridge, FORGET, RETAIN, "ga", cfg, forget_metric=lambda m: 0.0,
                  keep=KEEP, progress=False)
    h = res.history.dropna(subset=["keep_agree"]).set_index("step")
    try:
        assert res.steps < 40 + 20  # stopped early on damage
        assert h.keep_agree.iloc[-1] < 0.98  # the last step broke kept answers ...
        best = h.loc[res.best_step]
        assert best.keep_agree == h.keep_agree.max()  # ... the kept checkpoint is the least broken
        now = probe.measure(tiny_bridge)  # and the weights really were rolled back to it
        assert now["keep_agree"] == pytest.approx(best.keep_agree)
        assert now["keep_kl"] == pytest.approx(best.keep_kl, rel=1e-4, abs=1e-7)
        assert now["keep_kl"] < res.guard["keep_kl_last"]
    finally:
        res.undo()
    plain = unlearn(tiny_bridge, FORGET, RETAIN, "ga", UnlearnConfig(
        steps=40, repair_steps=20, lr=2e-2, eval_every=2, guard=None),
        forget_metric=lambda m: 0.0, progress=False)
    try:
        assert probe.measure(tiny_bridge)["keep_kl"] > now["keep_kl"]  # unguarded: more damage
        assert plain.best_step is None and plain.guard == {}
    finally:
        plain.undo()


def test_guard_prefers_meeting_the_target_and_holds_out_retain(tiny_bridge):
    before = _state(tiny_bridge)
    vals = iter([0.5, 0.0] + [0.5] * 100)  # only the second evaluation meets the target
    cfg = UnlearnConfig(steps=40, repair_steps=4, lr=1e-2, eval_every=2,
                        guard=GuardConfig(patience=2))
    res = unlearn(tiny_bridge, FORGET, RETAIN, "npo", cfg, forget_metric=lambda m: next(vals),
                  progress=False)
    res.undo()
    assert _same(tiny_bridge, before)
    assert res.best_step == 4 or res.guard["damage"]  # the only step at the target
    train, held = split_keep(RETAIN, GuardConfig(), 0)
    assert res.guard["n_keep"] == len(held) == 2 and not set(held) & set(train)
    budget = UnlearnConfig(steps=20, repair_steps=0, lr=1e-2, eval_every=2,
                           guard=GuardConfig(kl_budget=1e-9, max_change=0.5))
    r2 = unlearn(tiny_bridge, FORGET, RETAIN, "ga", budget, progress=False)
    r2.undo()
    assert r2.stopped == "guard" and r2.history.step.iloc[-1] <= 4


def test_screening_keeps_the_cause_and_drops_collateral(tiny_bridge):
    cands = [("the quick", " brown fox", " lazy dog"),  # the bad answer itself
             ("the lazy", " dog jumps", " fox over"),
             ("jumps over", " the lazy", " quick the"),
             ("brown fox", " jumps over", " dog dog")]
    keep = [("over the", " lazy dog"), ("brown fox", " jumps over")]
    before = _state(tiny_bridge)
    r = screen_forget(tiny_bridge, cands, [("the quick", " brown fox")], keep)
    assert _same(tiny_bridge, before)
    assert r.selected[0] == 0 and r.benefit[0] > 0 and bool(r.keep[0])
    assert not bool(r.keep.all())  # something was dropped: not a pass-through
    assert bool((r.keep == (r.benefit > r.cost.clamp_min(0))).all())
    assert "kept" in r.summary() and -1.0 <= r.consistency <= 1.0
    with pytest.raises(ConfigError, match="max_keep"):
        screen_forget(tiny_bridge, cands, [("the quick", " brown fox")], keep, max_keep=0)


def test_selective_forget_screens_out_a_collateral_candidate(tiny_bridge):
    train = [type("P", (), dict(id=f"p{i}", prompt=p, chosen=c, rejected=r))()
             for i, (p, c, r) in enumerate([("the quick", " brown fox", " lazy dog"),
                                            ("the lazy", " dog jumps", " fox over"),
                                            ("jumps over", " the lazy", " quick the"),
                                            ("brown fox", " jumps over", " dog dog"),
                                            ("over the", " lazy dog", " brown brown")])]
    thresh = _avg_logp(tiny_bridge, "the quick", " brown fox") - 2.0

    def find_bad(m):
        return [("the quick", " brown fox")] if _avg_logp(m, "the quick", " brown fox") > thresh else []

    cfg = UnlearnConfig(steps=40, repair_steps=3, lr=1e-2, eval_every=2)
    res = selective_forget(tiny_bridge, train, find_bad, lambda m, q: [0, 1, 2, 3], "flip", cfg,
                           screen=True)
    res.undo()
    assert "p0" in res.forget_ids and res.screened_out  # the cause stays, collateral goes
    assert not set(res.forget_ids) & set(res.screened_out)
    assert res.rounds["n_screened_out"].iloc[0] == len(res.screened_out)


def test_screen_warns_when_it_disagrees_with_the_attribution_order(tiny_bridge):
    cands = [("jumps over", " the lazy", " quick the"), ("the lazy", " dog jumps", " fox over"),
             ("brown fox", " jumps over", " dog dog"), ("the quick", " brown fox", " lazy dog")]
    with pytest.warns(UserWarning, match="disagree"):  # the cause listed last
        r = screen_forget(tiny_bridge, cands, [("the quick", " brown fox")],
                          [("over the", " lazy dog")])
    assert r.consistency < 0


def test_bad_guard_config():
    with pytest.raises(ConfigError, match="holdout"):
        GuardConfig(holdout=1.5)
    with pytest.raises(ConfigError, match="guard"):
        UnlearnConfig(guard="yes")
    with pytest.raises(ConfigError, match="kl_budget"):
        GuardConfig(kl_budget=0.0)
    with pytest.raises(ConfigError, match="max_change"):
        GuardConfig(max_change=1.0)
