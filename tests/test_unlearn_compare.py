"""Parity and the comparison harness on the toy world's tiny preset."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.studies.compare_edits import CompareConfig, compare
from mechunlearn.unlearn import UnlearnConfig
from mechunlearn.weights import as_basis, orthogonalize_, project_out, writer_hooks

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parity_on_toy_world_model(tiny_world):
    from mechunlearn.hooks import add_hooks

    model = tiny_world.model
    d = int(model.cfg.d_model)
    basis = as_basis(torch.randn(2, d, generator=torch.Generator().manual_seed(0)), d)
    ids = torch.randint(3, int(model.cfg.d_vocab), (4, 20),
                        generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(ids)
    with torch.no_grad():
        h = add_hooks(model, [(n, lambda a: project_out(a, basis)) for n in writer_hooks(model)])
        try:
            act = model(ids, attention_mask=am)
        finally:
            h.remove()
        base = model(ids, attention_mask=am)
        with orthogonalize_(model, basis):
            w = model(ids, attention_mask=am)
        assert torch.equal(model(ids, attention_mask=am), base)
    assert (w - act).abs().max().item() <= 1e-4
    assert (w - base).abs().max().item() > 1e-3


def test_compare_runs_and_restores(tiny_world):
    from mechunlearn.toyworld import generate_text, is_bad

    state = {k: v.clone() for k, v in tiny_world.model.state_dict().items()}
    if not any(map(is_bad, generate_text(tiny_world.model, list(tiny_world.eval["trigger"])))):
        pytest.skip("tiny world's tuned model gives no bad response to attribute")
    cfg = CompareConfig(methods=("orthogonalize", "npo"), max_queries=8, n_forget=16,
                        max_retain=32, unlearn=UnlearnConfig(steps=4, repair_steps=2,
                                                              eval_every=2))
    df = compare(tiny_world, cfg)
    assert list(df["method"]) == ["tuned", "gold", "orthogonalize", "npo"]
    for c in ("trigger_bad", "trigger_good", "bias", "kl_gold_ordinary", "kl_ordinary_tuned",
              "good_logp", "seconds", "gap_closed", "examples"):
        assert c in df.columns
    assert df.loc[df.method == "tuned", "kl_ordinary_tuned"].item() == pytest.approx(0, abs=1e-6)
    assert all(torch.equal(state[k], v) for k, v in tiny_world.model.state_dict().items())
