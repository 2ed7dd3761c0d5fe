"""The unlearning loop's fast paths: direct forward of the wrapped model, a sampled retain
evaluation, the teacher-forced stop metric, and selective forgetting's retain filter."""

from __future__ import annotations

import pytest
import torch
from _unlearn_helpers import FORGET, RETAIN, retain_batch

from mechunlearn import fastpath
from mechunlearn.errors import ConfigError
from mechunlearn.unlearn import UnlearnConfig, selective_forget, unlearn
from mechunlearn.unlearn.reference import forward

pytestmark = pytest.mark.usefixtures("one_thread")



def test_forward_fast_path_is_checked_and_equals_the_bridge(tiny_bridge):
    ids, am = retain_batch(tiny_bridge)
    fastpath.reset()
    with torch.no_grad():
        fast, _ = forward(tiny_bridge, ids, am)
        ref = tiny_bridge(ids, attention_mask=am)
    key = [k for k in fastpath.status() if k.startswith("unlearn.hf_forward:")]
    assert key and fastpath.status()[key[0]] is True  # the check ran and passed
    assert torch.allclose(fast, ref, atol=1e-5)


def test_forward_falls_back_under_a_user_hook(tiny_bridge):
    """With a user hook on the bridge, forward gives what the hooked bridge gives."""
    ids, am = retain_batch(tiny_bridge)
    with torch.no_grad():
        plain = tiny_bridge(ids, attention_mask=am)
    seen = []
    hp = tiny_bridge.hook_dict["blocks.0.hook_resid_post"]
    h = hp.register_forward_hook(lambda m, i, o: (seen.append(1), o * torch.linspace(-2, 2, o.shape[-1]))[1])
    try:
        with torch.no_grad():
            out, _ = forward(tiny_bridge, ids, am)
            hooked = tiny_bridge(ids, attention_mask=am)
    finally:
        h.remove()
    assert seen and torch.allclose(out, hooked, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)  # the hook took effect


def test_eval_retain_samples_rows_and_is_validated(tiny_bridge):
    with pytest.raises(ConfigError, match="eval_retain"):
        UnlearnConfig(eval_retain=0)
    kls = {}
    for n in (1, None):
        cfg = UnlearnConfig(steps=2, repair_steps=0, lr=1e-2, eval_every=2, eval_retain=n)
        r = unlearn(tiny_bridge, FORGET, RETAIN, "npo", cfg, progress=False)
        kls[n] = float(r.history.retain_kl_eval.dropna().iloc[-1])
        r.undo()
    # same training (seeded), different evaluation rows: one row's KL is not the mean of four
    assert kls[1] != pytest.approx(kls[None], rel=1e-6)


def test_bad_answer_tracker_decodes_only_to_confirm(tiny_bridge):
    from mechunlearn.studies.format import raw
    from mechunlearn.studies.stopping import BadAnswerTracker
    from mechunlearn.studies.verify import generate

    fmt = raw()
    prompts = ["the quick", "over the", "a brown"]
    answers = generate(tiny_bridge, fmt, prompts, 6)[0]
    bad = {answers[0]}
    tr = BadAnswerTracker(fmt, lambda r: r in bad, prompts, 6)
    assert tr(tiny_bridge) == pytest.approx(1 / 3)
    assert (tr.n_decodes, tr.n_checks) == (1, 0)
    assert tr(tiny_bridge) == pytest.approx(1 / 3)  # teacher-forced: the answer is still greedy
    assert (tr.n_decodes, tr.n_checks) == (1, 1)
    assert tr.find_bad(tiny_bridge) == [(prompts[0], answers[0])]
    # change the model so the remembered answer is no longer greedy: the tracker confirms
    # by decoding (never reports "fixed" from the cheap check alone)
    w = tiny_bridge.original_model.lm_head.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.add_(torch.randn_like(w, generator=torch.Generator().manual_seed(0)) * 5)
        now = generate(tiny_bridge, fmt, prompts, 6)[0][0]
        n = tr.n_decodes
        assert tr(tiny_bridge) == pytest.approx((now in bad) / 3)
        assert tr.n_decodes == n + 1
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_selective_forget_retain_ok_keeps_rows_out_of_the_retain_set(tiny_bridge, monkeypatch):
    import mechunlearn.unlearn.selective as sel
    from mechunlearn.studies.data import TrainPair

    train = [TrainPair(f"f{i}", p, b, g) for i, (p, b, g) in enumerate(FORGET)] + [
        TrainPair(f"r{i}", p, r, " no") for i, (p, r) in enumerate(RETAIN)]
    seen = []
    real = sel.unlearn

    def spy(model, forget, retain, *a, **k):
        seen.append(list(retain))
        return real(model, forget, retain, *a, **k)

    monkeypatch.setattr(sel, "unlearn", spy)
    calls = []
    res = selective_forget(tiny_bridge, train, lambda m: [("the quick", " brown fox")]
                           if not calls else [], lambda m, q: (calls.append(1), [0])[1],
                           "flip", UnlearnConfig(steps=1, repair_steps=0, eval_every=1),
                           max_rounds=1, retain_ok=lambda i: i != 2,
                           forget_metric=lambda m: 0.0)
    res.undo()
    assert seen, "unlearn was not called"
    kept = {x.prompt for x in seen[0]}
    assert "fox jumps" not in kept and "the lazy" in kept  # row 2 refused, row 3 kept
    assert res.rounds.steps.iloc[0] == 1  # the given forget_metric (0 <= target) stopped it
