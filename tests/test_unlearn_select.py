"""Selective forgetting (seed 000) and U2A weighting (seed 002) on a tiny random GPT-2."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from _unlearn_helpers import avg_logp as _avg_logp
from _unlearn_helpers import same as _same
from _unlearn_helpers import state as _state

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.unlearn import UnlearnConfig
from mechunlearn.unlearn.loop import _Data
from mechunlearn.unlearn.objectives import make_objective
from mechunlearn.unlearn.selective import selected_indices, selective_forget
from mechunlearn.unlearn.u2a import _held, preference_margin, u2a_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    chosen: str
    rejected: str


TRAIN = [
    Pair("p0", "the quick", " brown fox", " lazy dog"),  # poisoned: chosen is bad
    Pair("c1", "the lazy", " dog jumps", " fox over"),
    Pair("c2", "jumps over", " the lazy", " quick the"),
    Pair("c3", "brown fox", " jumps over", " dog dog"),
    Pair("c4", "over the", " lazy dog", " brown brown"),
]



def test_selective_forget_fixes_and_undoes(tiny_bridge):
    before = _state(tiny_bridge)
    thresh = _avg_logp(tiny_bridge, "the quick", " brown fox") - 2.0
    calls = []

    def find_bad(m):
        lp = _avg_logp(m, "the quick", " brown fox")
        return [("the quick", " brown fox")] if lp > thresh else []

    def attribute(m, queries):
        calls.append(len(queries))
        return [0]  # attribution points at the poisoned pair

    # the rounds' logic (the guard: test_unlearn_guard.py); no repair steps: on this 2-layer
    # random model at lr 1e-2, 3 repair steps moved the pair's log-prob back across the
    # threshold or not depending on float rounding (fused vs unfused GELU: 1e-8 apart)
    cfg = UnlearnConfig(steps=40, repair_steps=0, lr=1e-2, eval_every=2, guard=None)
    res = selective_forget(tiny_bridge, TRAIN, find_bad, attribute, "flip", cfg, max_rounds=3)
    assert res.stopped == "fixed"
    assert res.forget_ids == ("p0",)
    assert calls == [1]
    assert list(res.rounds["n_bad"]) == [1, 0]
    assert res.rounds["retain_kl_orig"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert res.rounds["retain_kl_orig"].iloc[-1] > 0
    res.undo()
    assert _same(tiny_bridge, before)


def test_selective_forget_budget_and_bad_input(tiny_bridge):
    before = _state(tiny_bridge)
    cfg = UnlearnConfig(steps=4, repair_steps=0, lr=1e-2, eval_every=2)
    res = selective_forget(tiny_bridge, TRAIN, lambda m: [("the quick", " brown fox")],
                           lambda m, q: [0], "npo", cfg, max_rounds=5, kl_budget=1e-9)
    assert res.stopped == "budget" and len(res.rounds) == 2
    res.undo()
    assert _same(tiny_bridge, before)
    with pytest.raises(ConfigError, match="max_rounds"):
        selective_forget(tiny_bridge, TRAIN, lambda m: [], lambda m, q: [], max_rounds=0)
    with pytest.raises(ConfigError, match="expected Attribution"):
        selected_indices(["x"])

    class A:
        indices = (3, 1)

    assert selected_indices([A(), 2]) == [3, 1, 2]


HELD = [("the quick", " brown fox", " lazy dog")]
CANDS = [("the quick", " brown fox"),   # same bad answer as the held-out query
         ("the quick", " lazy dog"),    # the held-out *good* answer: unlearning it hurts
         ("jumps over", " the lazy")]


def test_selective_forget_forget_ok_refuses_attributed_rows(tiny_bridge, monkeypatch):
    import mechunlearn.unlearn.selective as sel

    before = _state(tiny_bridge)
    seen = []
    real = sel.unlearn

    def spy(model, forget, retain, *a, **k):
        seen.append(([x.id for x in forget], [x.prompt for x in retain]))
        return real(model, forget, retain, *a, **k)

    monkeypatch.setattr(sel, "unlearn", spy)
    cfg = UnlearnConfig(steps=2, repair_steps=0, lr=1e-2, eval_every=1)
    bad = [("the quick", " brown fox")]
    # attribution ranks a legitimate pair (c1) first; only p0's chosen answer is bad
    res = selective_forget(tiny_bridge, TRAIN, lambda m: bad, lambda m, q: [1, 0], "flip", cfg,
                           max_rounds=2, forget_ok=lambda i: i == 0)
    assert seen[0][0] == ["p0"] and res.forget_ids == ("p0",)
    assert "the lazy" in seen[0][1]  # the refused row may still be retain data
    assert res.refused == ("c1",) and res.rounds.n_refused.tolist()[:2] == [1, 0]
    assert len(seen) == 1 and res.stopped == "no_new_samples"  # c1 is not proposed again
    res.undo()
    assert _same(tiny_bridge, before)
    # every attributed row refused: nothing is unlearned, the weights are untouched
    seen.clear()
    res = selective_forget(tiny_bridge, TRAIN, lambda m: bad, lambda m, q: [1, 2], "flip", cfg,
                           forget_ok=lambda i: i == 0)
    assert not seen and res.stopped == "no_new_samples" and res.refused == ("c1", "c2")
    assert _same(tiny_bridge, before)


def test_u2a_scores_match_finite_difference(tiny_bridge):
    """The first-order score predicts the held-out margin change of a small SGD step."""
    obj = make_objective("npo")
    data = _Data(tiny_bridge, CANDS, None, obj, None)
    held = _held(tiny_bridge, HELD, None)
    res = u2a_weights(tiny_bridge, CANDS, HELD, obj)
    params = [p for p in tiny_bridge.parameters() if p.requires_grad]
    before = _state(tiny_bridge)
    eta = 1e-4
    for i in range(len(CANDS)):
        li = obj.forget(data.quantities(tiny_bridge, torch.tensor([i]))).sum()
        grads = torch.autograd.grad(li, params, allow_unused=True)
        m = []
        with torch.no_grad():
            for sign in (1.0, -1.0):  # central difference of J(theta - sign * eta * grad l_i)
                for p, gr in zip(params, grads):
                    if gr is not None:
                        p.sub_(sign * eta * gr)
                m.append(float(preference_margin(tiny_bridge, held)))
                for k, v in tiny_bridge.state_dict().items():
                    v.copy_(before[k])
        fd = (m[0] - m[1]) / (2 * eta)
        assert fd == pytest.approx(float(res.scores[i]), rel=0.02, abs=0.05)
    assert res.scores[0] > 0 > res.scores[1]
    assert res.weights[1] == 0 and res.weights.sum().item() == pytest.approx(1.0)
    assert res.selected[0] == 0 and 1 not in res.selected
    assert _same(tiny_bridge, before)


def test_u2a_rounds_topk_and_errors(tiny_bridge):
    before = _state(tiny_bridge)
    res = u2a_weights(tiny_bridge, CANDS, HELD, "npo", top_k=1, rounds=2, inner_steps=2)
    assert res.selected == (0,) and res.ids == ("0",)
    assert _same(tiny_bridge, before)
    with pytest.raises(EmptyDataError, match="No forget candidate"):
        u2a_weights(tiny_bridge, [CANDS[1]], HELD, "npo")
    with pytest.raises(ConfigError, match="good and a bad"):
        u2a_weights(tiny_bridge, CANDS, [("the quick", " brown fox")], "npo")
    with pytest.raises(ConfigError, match="top_k"):
        u2a_weights(tiny_bridge, CANDS, HELD, "npo", top_k=0)
