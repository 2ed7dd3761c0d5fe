"""selective_forget's first-round attribution from the caller, its retain rows, and the KL to
the original model computed at first need (tiny random GPT-2)."""

from __future__ import annotations

import pytest
import torch
from _unlearn_helpers import same as _same
from _unlearn_helpers import state as _state
from test_unlearn_select import TRAIN

import mechunlearn.unlearn.selective as sel
from mechunlearn.attribution.base import Attribution
from mechunlearn.errors import ConfigError
from mechunlearn.unlearn import UnlearnConfig
from mechunlearn.unlearn.data import as_items
from mechunlearn.unlearn.retain_probe import kl, logprobs
from mechunlearn.unlearn.selective import selective_forget

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = [("the quick", " brown fox")]
CFG = UnlearnConfig(steps=2, repair_steps=0, lr=1e-2, eval_every=1)


def _att(rows: list[int], ids: list[str]) -> Attribution:
    n = len(TRAIN)
    return Attribution(tuple(rows), tuple(ids), torch.full((len(rows),), 1.0 / len(rows),
                                                           dtype=torch.float64),
                       0.1, torch.zeros(n, dtype=torch.float64), "convex")


def _spy(monkeypatch) -> list[tuple[list[str], list[str]]]:
    seen: list[tuple[list[str], list[str]]] = []
    real = sel.unlearn

    def spy(model, forget, retain, *a, **k):
        seen.append(([x.id for x in forget], [x.id for x in retain]))
        return real(model, forget, retain, *a, **k)

    monkeypatch.setattr(sel, "unlearn", spy)
    return seen


def test_first_attribution_replaces_the_first_attribute_call(tiny_bridge, monkeypatch):
    before = _state(tiny_bridge)
    seen = _spy(monkeypatch)
    calls = []

    def attribute(m, queries):  # would pick the poisoned pair p0
        calls.append(len(queries))
        return [0]

    # the caller's attribution (rows c2 then p0) is unlearned as given, attribute never runs
    res = selective_forget(tiny_bridge, TRAIN, lambda m: BAD, attribute, "flip", CFG,
                           max_rounds=1, first_attribution=[2, 0])
    assert calls == [] and res.forget_ids == ("c2", "p0") and seen[0][0] == ["c2", "p0"]
    nb = res.rounds["n_bad"].tolist()  # round 0: the caller's attribution stands for find_bad
    assert nb[1] == 1 and nb[0] != nb[0]
    res.undo()
    assert _same(tiny_bridge, before)
    # an Attribution object works the same; forget_ok still refuses rows; later rounds attribute
    seen.clear()
    res = selective_forget(tiny_bridge, TRAIN, lambda m: BAD, attribute, "flip", CFG,
                           max_rounds=2, first_attribution=_att([3, 1], ["c3", "c1"]),
                           forget_ok=lambda i: i != 1)
    assert calls == [1] and [f for f, _ in seen] == [["c3"], ["c3", "p0"]]
    assert res.refused == ("c1",)
    res.undo()
    # without it, the first round attributes (the control: the count above is not vacuous)
    calls.clear()
    res = selective_forget(tiny_bridge, TRAIN, lambda m: BAD, attribute, "flip", CFG,
                           max_rounds=1)
    assert calls == [1] and res.forget_ids == ("p0",)
    res.undo()
    assert _same(tiny_bridge, before)


def test_first_attribution_of_another_training_set_is_refused(tiny_bridge):
    before = _state(tiny_bridge)
    run = lambda first: selective_forget(  # noqa: E731
        tiny_bridge, TRAIN, lambda m: BAD, lambda m, q: [0], "flip", CFG,
        first_attribution=first)
    with pytest.raises(ConfigError, match="first_attribution does not match train.*'c2'"):
        run(_att([1, 2], ["c1", "x9"]))
    with pytest.raises(ConfigError, match=r"first_attribution has rows \[7\] outside train"):
        run([0, 7])
    for wrong in (["p0"], "p0", 3.5):
        with pytest.raises(ConfigError, match="first_attribution must be an Attribution"):
            run(wrong)
    with pytest.raises(ConfigError, match="retain_rows must be rows of train"):
        selective_forget(tiny_bridge, TRAIN, lambda m: BAD, lambda m, q: [0], "flip", CFG,
                         retain_rows=[1, -1])
    assert _same(tiny_bridge, before)  # refused before any weight changed


def test_retain_rows_fix_the_retain_sample_in_order(tiny_bridge, monkeypatch):
    seen = _spy(monkeypatch)
    res = selective_forget(tiny_bridge, TRAIN, lambda m: BAD, lambda m, q: [0], "flip", CFG,
                           max_rounds=1, max_retain=2, retain_rows=[4, 0, 2, 1],
                           retain_ok=lambda i: i != 2)
    # p0 (row 0) is forgotten and c2 refused by retain_ok: the first two of what is left
    assert seen == [(["p0"], ["c4", "c1"])]
    res.undo()


def test_kl_to_the_original_at_first_need_equals_an_eager_reference(tiny_bridge):
    before = _state(tiny_bridge)
    items = as_items(TRAIN, "retain")
    probe = [items[int(i)] for i in torch.randperm(len(items),
                                                   generator=torch.Generator().manual_seed(0))]
    eager = logprobs(tiny_bridge, probe, None)  # the original, before any edit
    cfg = UnlearnConfig(steps=3, repair_steps=0, lr=1e-2, eval_every=1)
    res = selective_forget(tiny_bridge, TRAIN, lambda m: BAD, lambda m, q: [0], "flip", cfg,
                           max_rounds=1, max_retain=len(TRAIN))
    got = res.rounds["retain_kl_orig"].tolist()
    assert got[0] == 0.0 and got[1] > 1e-4  # round 1: the edited model, measured lazily
    assert got[1] == kl(tiny_bridge, probe, eager, None)  # bit for bit the eager reference
    edited = _state(tiny_bridge)
    res.undo()
    assert _same(tiny_bridge, before) and not _same(tiny_bridge, edited)
