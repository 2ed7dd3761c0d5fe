"""The unlearning loop on a tiny random GPT-2 with synthetic data."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError
from mechunlearn.sites import Site
from mechunlearn.unlearn import RMU, UnlearnConfig, unlearn
from mechunlearn.unlearn.loop import _draw

WORDS = "the quick brown fox jumps over the lazy dog".split()
FORGET = [("the quick", " brown fox", " lazy dog"), ("over the", " jumps over", " lazy dog")]
RETAIN = [(" ".join(WORDS[i:i + 2]), " " + " ".join(WORDS[i + 2:i + 4])) for i in range(1, 5)]
# the plain loop (guard=None): at lr 1e-2 a random model changes its kept answers at once and
# the guard would stop it; the guard has its own tests (test_unlearn_guard.py)
FAST = UnlearnConfig(steps=6, repair_steps=2, lr=1e-2, eval_every=3, guard=None)


pytestmark = pytest.mark.usefixtures("one_thread")


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(m, s):
    return all(torch.equal(s[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("obj", ["ga", "graddiff", "npo", "simnpo", "flip", "rmu"])
def test_objective_lowers_forget_logprob_and_undo_is_exact(tiny_bridge, obj):
    before = _state(tiny_bridge)
    if obj == "rmu":
        obj = RMU(site=Site("blocks.1.hook_resid_post", "all"), coef=20.0)
        cfg = UnlearnConfig(steps=6, repair_steps=0, lr=1e-2, eval_every=3, guard=None)
    else:
        cfg = FAST
    res = unlearn(tiny_bridge, FORGET, RETAIN, obj, cfg, progress=False)
    h = res.history
    assert {"step", "phase", "loss", "retain_kl", "retain_kl_eval"} <= set(h.columns)
    assert len(h) == res.steps
    if isinstance(obj, RMU):
        assert h.forget_loss.iloc[cfg.steps - 1] < h.forget_loss.iloc[0]
    else:
        assert h.forget_logp.iloc[cfg.steps - 1] < h.forget_logp.iloc[0]
    assert not _same(tiny_bridge, before)
    res.undo()
    assert _same(tiny_bridge, before)


def test_seeded_runs_repeat(tiny_bridge):
    runs = []
    for _ in range(2):
        r = unlearn(tiny_bridge, FORGET, RETAIN, "npo", FAST, progress=False)
        runs.append(r.history.loss.tolist())
        r.undo()
    assert runs[0] == runs[1]


def test_stops_on_target_then_repairs(tiny_bridge):
    values = iter([0.8, 0.4, 0.0, 0.0, 0.0, 0.0])
    cfg = UnlearnConfig(steps=50, repair_steps=4, eval_every=2, lr=1e-3, repair="retain",
                        guard=None)  # the plain loop; the guard's repair is in test_unlearn_guard
    r = unlearn(tiny_bridge, FORGET, RETAIN, "npo", cfg, forget_metric=lambda m: next(values),
                progress=False)
    r.undo()
    assert r.stopped == "target"
    assert r.steps == 6 + 4
    assert list(r.history.phase) == ["forget"] * 6 + ["repair"] * 4
    assert r.history.forget_loss.iloc[6:].isna().all()  # repair="retain": no forget term


def test_kl_budget_and_stop_fn(tiny_bridge):
    cfg = UnlearnConfig(steps=30, repair_steps=0, eval_every=2, lr=1e-2, kl_budget=1e-9)
    r = unlearn(tiny_bridge, FORGET, RETAIN, "ga", cfg, progress=False)
    r.undo()
    assert r.stopped == "kl_budget" and r.steps == 2
    cfg2 = UnlearnConfig(steps=30, repair_steps=0, eval_every=3, lr=1e-2)
    r2 = unlearn(tiny_bridge, FORGET, RETAIN, "ga", cfg2, metrics={"m": lambda m: 1.0},
                 stop=lambda row: row["m"] > 0.5, progress=False)
    r2.undo()
    assert r2.stopped == "stop_fn" and r2.steps == 3 and r2.last()["m"] == 1.0


def test_bad_inputs(tiny_bridge):
    before = _state(tiny_bridge)
    with pytest.raises(EmptyDataError, match="forget"):
        unlearn(tiny_bridge, [], RETAIN, "npo", FAST, progress=False)
    with pytest.raises(ConfigError, match="good response"):
        unlearn(tiny_bridge, [(p, b) for p, b, _ in FORGET], RETAIN, "flip", FAST,
                progress=False)
    with pytest.raises(ShapeError, match="weights"):
        unlearn(tiny_bridge, FORGET, RETAIN, "npo", FAST, weights=[1.0], progress=False)
    with pytest.raises(ConfigError, match="weights"):
        unlearn(tiny_bridge, FORGET, RETAIN, "npo", FAST, weights=[-1.0, 1.0], progress=False)
    with pytest.raises(ConfigError, match="steps"):
        UnlearnConfig(steps=0)
    with pytest.warns(UserWarning, match="also in the forget set"):
        r = unlearn(tiny_bridge, FORGET, RETAIN + [FORGET[0][:2]], "npo", FAST, progress=False)
    r.undo()

    def boom(m):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        unlearn(tiny_bridge, FORGET, RETAIN, "npo", FAST, forget_metric=boom, progress=False)
    assert _same(tiny_bridge, before)


def test_draw_respects_zero_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0])
    for _ in range(20):
        assert set(_draw(w, 2, g).tolist()) <= {1, 3, 4}
    assert _draw(w, 8, g).tolist() == [1, 3, 4]


def test_objective_supplies_its_own_retain_term(tiny_bridge):
    """The loop adds whatever ``Objective.retain`` returns (no special-casing by type):
    a subclass whose retain term is a constant shifts the recorded loss by exactly it, and
    GradDiff's retain NLL changes the first step's loss against plain GA."""
    from dataclasses import dataclass

    from mechunlearn.unlearn.objectives import GradDiff, GradientAscent

    @dataclass(frozen=True)
    class Shifted(GradientAscent):
        def retain(self, r):
            return r["logits"].new_tensor(5.0)

    cfg = UnlearnConfig(steps=1, repair_steps=0, lr=1e-2, eval_every=1, guard=None)
    rows = {}
    for name, obj in (("ga", GradientAscent()), ("shift", Shifted()),
                      ("gd", GradDiff(retain_nll=1.0))):
        r = unlearn(tiny_bridge, FORGET, RETAIN, obj, cfg, progress=False)
        rows[name] = r.history.iloc[0]
        r.undo()
    assert rows["shift"].loss == pytest.approx(rows["ga"].loss + 5.0, abs=1e-4)
    # GradDiff adds the retain NLL (> 0 on a random model: several nats per token)
    assert rows["gd"].loss > rows["ga"].loss + 1.0
