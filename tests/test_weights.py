"""Weight orthogonalisation: parity with activation projection, undo, export, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn.errors import ArchitectureError, ConfigError, ShapeError
from mechunlearn.hooks import add_hooks
from mechunlearn.sites import Site
from mechunlearn.weights import (
    as_basis,
    export_hf,
    find_writers,
    orthogonalize_,
    project_out,
    writer_hooks,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tiny_bridge):
    """Random 2-layer BERT (post-LN, d=32) wrapped by boot_transformers."""
    from transformers import BertConfig, BertForMaskedLM

    from mechunlearn.models import load_bridge

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tiny_bridge.cfg.d_vocab, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = BertForMaskedLM(cfg).eval()
    d = tmp_path_factory.mktemp("tiny_bert")
    m.save_pretrained(str(d))
    tiny_bridge.tokenizer.save_pretrained(str(d))
    return load_bridge(d, hf_model=m)


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 250, (3, 9), generator=g)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids))


def _state(model):
    return {k: v.clone() for k, v in model.original_model.state_dict().items()}


def _projected_logits(model, ids, basis, hooks):
    h = add_hooks(model, [(n, lambda a: project_out(a, basis)) for n in hooks])
    try:
        out = _logits(model, ids)
        assert not h.unfired(), f"hooks never fired: {h.unfired()}"
    finally:
        h.remove()
    return out


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_parity_with_activation_projection(arch, k, tiny_bridge, tiny_bert):
    model = tiny_bridge if arch == "gpt2" else tiny_bert
    ids = _ids(k)
    basis = as_basis(torch.randn(k, 32, generator=torch.Generator().manual_seed(k)), 32)
    base = _logits(model, ids)
    act = _projected_logits(model, ids, basis, writer_hooks(model))
    with orthogonalize_(model, basis):
        edited = _logits(model, ids)
    assert (edited - act).abs().max().item() <= 1e-4
    assert (edited - base).abs().max().item() > 1e-3  # the edit does something
    assert torch.equal(_logits(model, ids), base)


def test_gpt2_parity_with_standard_hook_names(tiny_bridge):
    n = tiny_bridge.cfg.n_layers
    hooks = ["hook_embed", "hook_pos_embed"] + [
        f"blocks.{i}.hook_{w}_out" for i in range(n) for w in ("attn", "mlp")]
    basis = as_basis(torch.randn(2, 32, generator=torch.Generator().manual_seed(5)), 32)
    ids = _ids(5)
    act = _projected_logits(tiny_bridge, ids, basis, hooks)
    with orthogonalize_(tiny_bridge, basis):
        assert (_logits(tiny_bridge, ids) - act).abs().max().item() <= 1e-4


def _resid(model, ids, names):
    _, cache = model.run_with_cache(ids, attention_mask=torch.ones_like(ids), names_filter=names)
    return {n: cache[n] for n in names}


def test_pre_ln_residual_never_gains_component(tiny_bridge):
    u = as_basis(torch.randn(32, generator=torch.Generator().manual_seed(3)), 32)
    names = [f"blocks.{i}.hook_resid_{k}" for i in range(2) for k in ("pre", "mid", "post")]
    ids = _ids(3)
    before = _resid(tiny_bridge, ids, names)
    with orthogonalize_(tiny_bridge, u):
        after = _resid(tiny_bridge, ids, names)
    for n in names:
        assert (before[n] @ u.T.float()).abs().max() > 1e-2
        assert (after[n] @ u.T.float()).abs().max() <= 1e-5 * after[n].abs().max()


def test_post_ln_claim_is_writer_outputs_only(tiny_bert):
    """BERT: writer outputs lose the direction; the LayerNorm'd stream may regain it."""
    u = as_basis(torch.randn(32, generator=torch.Generator().manual_seed(4)), 32)
    ids = _ids(4)
    wh = writer_hooks(tiny_bert)
    with orthogonalize_(tiny_bert, u):
        acts = _resid(tiny_bert, ids, wh + ["blocks.0.hook_resid_post"])
    for n in wh:
        assert (acts[n] @ u.T.float()).abs().max() <= 1e-5 * max(1.0, acts[n].abs().max())
    assert (acts["blocks.0.hook_resid_post"] @ u.T.float()).abs().max() > 1e-3


def test_undo_is_bit_exact_and_reties(tiny_bridge):
    hf = tiny_bridge.original_model
    before = _state(tiny_bridge)
    emb = hf.transformer.wte.weight
    assert hf.lm_head.weight is emb
    emb0 = emb.detach().clone()
    h = orthogonalize_(tiny_bridge, torch.randn(2, 32))
    assert hf.lm_head.weight is not emb  # untied: the unembedding keeps its values
    assert torch.equal(hf.lm_head.weight, emb0)
    assert not torch.equal(emb, emb0)
    h.undo()
    h.undo()  # idempotent
    assert hf.lm_head.weight is hf.transformer.wte.weight
    after = tiny_bridge.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_writers_subset_edits_only_those(tiny_bridge):
    before = _state(tiny_bridge)
    with orthogonalize_(tiny_bridge, torch.randn(32), writers=["mlp"]) as h:
        changed = {k for k, v in tiny_bridge.original_model.state_dict().items()
                   if not torch.equal(v, before[k])}
        assert h.names == ["blocks.0.mlp.out", "blocks.1.mlp.out"]
    assert changed and all("mlp" in k for k in changed)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_export_reloads_with_identical_logits(arch, tiny_bridge, tiny_bert, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    model = tiny_bridge if arch == "gpt2" else tiny_bert
    cls = AutoModelForCausalLM if arch == "gpt2" else AutoModelForMaskedLM
    ids = _ids(7)
    with orthogonalize_(model, torch.randn(2, 32)):
        out = export_hf(model, tmp_path / "edited")
        expected = _logits(model, ids)
    assert (out / "model.safetensors").is_file()
    plain = cls.from_pretrained(str(out)).eval()
    with torch.no_grad():
        got = plain(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - _logits(model, ids)).abs().max().item() > 1e-4  # differs from unedited


def test_bad_inputs_leave_model_unchanged(tiny_bridge, native_bridge):
    before = _state(tiny_bridge)
    with pytest.raises(ShapeError, match="d_model=32"):
        orthogonalize_(tiny_bridge, torch.randn(2, 31))
    with pytest.raises(ShapeError, match="linearly dependent"):
        orthogonalize_(tiny_bridge, torch.ones(2, 32))
    with pytest.raises(ArchitectureError, match="attention"):
        orthogonalize_(tiny_bridge, torch.randn(32), writers=["attention"])
    with pytest.raises(ArchitectureError, match="token_type_embed"):
        orthogonalize_(tiny_bridge, torch.randn(32), writers=["token_type_embed"])
    with pytest.raises(ArchitectureError, match="model_type"):
        find_writers(native_bridge)

    class Dirs:  # a Directions-like object found at a non-residual hook
        basis = torch.randn(1, 32)
        site = Site("blocks.0.attn.hook_z")

    with pytest.raises(ConfigError, match="hook_z"):
        orthogonalize_(tiny_bridge, Dirs())
    after = tiny_bridge.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_failure_midway_restores(tiny_bridge, monkeypatch):
    import mechunlearn.weights as W

    before = _state(tiny_bridge)
    calls = {"n": 0}
    real = W._holders

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(W, "_holders", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        orthogonalize_(tiny_bridge, torch.randn(32))
    hf = tiny_bridge.original_model
    assert hf.lm_head.weight is hf.transformer.wte.weight
    after = hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_projection_idempotent_and_kills_directions(k, seed):
    g = torch.Generator().manual_seed(seed)
    u = as_basis(torch.randn(k, 16, generator=g, dtype=torch.float64), 16)
    assert torch.allclose(u @ u.T, torch.eye(k, dtype=torch.float64), atol=1e-10)
    x = torch.randn(5, 16, generator=g, dtype=torch.float64)
    p = project_out(x, u)
    assert torch.allclose(project_out(p, u), p, atol=1e-12)
    assert (p @ u.T).abs().max() < 1e-12


def test_export_after_training_split_qkv(tiny_bridge, tmp_path):
    """Training moves the bridge's split q/k/v copies; export must fold them into c_attn."""
    from transformers import AutoModelForCausalLM

    q = tiny_bridge.blocks[0].attn.q._original_component.weight
    old = q.detach().clone()
    ids = _ids(8)
    try:
        with torch.no_grad():
            q.add_(0.5 * torch.randn_like(q))
        expected = _logits(tiny_bridge, ids)
        out = export_hf(tiny_bridge, tmp_path / "trained")
        plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        with torch.no_grad():
            got = plain(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert (got - expected).abs().max().item() <= 1e-5
    finally:
        with torch.no_grad():
            q.copy_(old)
        export_hf(tiny_bridge, tmp_path / "restored")  # re-syncs c_attn


def test_parity_with_project_interventions(tiny_bridge):
    """The same parity through the library's own ``apply`` + ``Project`` interventions."""
    from mechunlearn.hooks import apply
    from mechunlearn.interventions import Project

    basis = as_basis(torch.randn(2, 32, generator=torch.Generator().manual_seed(9)), 32)
    ids = _ids(9)
    ivs = [Project(basis.float(), site=Site(h, "all")) for h in writer_hooks(tiny_bridge)]
    with apply(tiny_bridge, *ivs):  # raises HookNotFiredError if a writer hook never fired
        act = _logits(tiny_bridge, ids)
    with orthogonalize_(tiny_bridge, basis):
        assert (_logits(tiny_bridge, ids) - act).abs().max().item() <= 1e-4
