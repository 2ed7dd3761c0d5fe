"""Conformance suite: every check of ``mechunlearn doctor`` on a tiny random model of every
family in ``mechunlearn.tiny_models.FAMILIES`` (2 layers, d_model 64, GQA where the family has
it), plus the corrections and refusals the checks revealed."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.conformance.doctor import ORDER, doctor, format_report, passed
from mechunlearn.conformance.registry import CHECKS, FAIL, NA, OK, Context, Row
from mechunlearn.errors import ArchitectureError
from mechunlearn.tiny_models import FAMILIES, build_tiny, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PARALLEL = {"gpt_neox", "gptj", "phi"}
POST_NORM = {"gemma2", "gemma3_text"}  # attention/MLP outputs normalised before the add


def expected_na(family: str) -> set[tuple[str, str]]:
    """(check, target) rows that must be n/a for ``family`` (and only those)."""
    out: set[tuple[str, str]] = set()
    if family in PARALLEL:
        out.add(("hooks", "hook_resid_mid"))
    if family == "bert":
        out |= {("kv_cache", "cached decoding"),
                ("orthogonalize", "no component along u in the residual stream")}
    if family in POST_NORM:
        out.add(("orthogonalize", "orthogonalize_"))
    return out


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    made: dict[str, Context] = {}

    def get(family: str) -> Context:
        if family not in made:
            folder = tmp_path_factory.mktemp(family)
            made[family] = Context(tiny_model(family, folder), folder)
        return made[family]

    return get


@pytest.mark.parametrize("check", ORDER)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_conformance(family, check, contexts):
    assert_conforms(family, check, contexts(family))


CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device: the GPU variant runs where one exists")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_conformance_cuda(family, tmp_path):
    """Every check on the model booted on ``cuda`` (plain copies stay on the CPU)."""
    from mechunlearn.models import load_bridge

    folder = build_tiny(family, tmp_path / family)
    ctx = Context(load_bridge(folder, device="cuda"), folder)
    assert ctx.device.type == "cuda"
    for check in ORDER:
        assert_conforms(family, check, ctx)


def assert_conforms(family: str, check: str, ctx: Context) -> None:
    rows: list[Row] = CHECKS[check].fn(ctx)
    assert rows
    fails = [r for r in rows if r.status == FAIL]
    assert not fails, "\n".join(f"{r.target}: {r.value} > {r.tol} {r.detail}" for r in fails)
    na = {(r.check, r.target) for r in rows if r.status == NA}
    assert na == {x for x in expected_na(family) if x[0] == check}
    if na != {(check, t) for t in [r.target for r in rows]}:
        assert any(r.status == OK for r in rows)


def test_checks_fail_when_the_property_is_broken(contexts):
    """The identity and HF-parity checks are not vacuous: a hook aliased to the wrong tensor
    (TransformerLens 4.3's own BERT aliases, before mechunlearn.hook_fixes) fails them."""
    from transformer_lens.model_bridge.generalized_components.base import _bump_alias_generation

    from mechunlearn.hook_fixes import FIXES

    ctx = contexts("bert")
    model = ctx.model
    saved = [dict(b.hook_aliases) for b in model.blocks]
    try:
        for b in model.blocks:  # restore the upstream aliases
            b.hook_aliases = {**b.hook_aliases, "hook_attn_out": "attn.hook_out",
                              "hook_resid_mid": "ln2.hook_in"}
        _bump_alias_generation()
        bad = Context(model, ctx.folder)
        assert bad.cache["blocks.0.hook_attn_out"].shape == (2, 7, 64)
        ident = CHECKS["residual_identity"].fn(bad)
        hf = CHECKS["matches_hf"].fn(bad)
        assert any(r.status == FAIL for r in ident)
        assert [r.target for r in hf if r.status == FAIL] == [
            "L0: attn_out = HF attention writer output", "L1: attn_out = HF attention writer output"]
        # the upstream hook_attn_out is LayerNorm(o_proj output + resid_pre)
        c, ln1 = bad.cache, model.blocks[0].ln1._original_component
        with torch.no_grad():
            want = ln1(c["blocks.0.attn.o.hook_out"] + c["blocks.0.hook_resid_pre"])
        assert torch.allclose(c["blocks.0.hook_attn_out"], want, atol=1e-5)
    finally:
        for b, a in zip(model.blocks, saved):
            b.hook_aliases = a
        _bump_alias_generation()
    assert set(FIXES["bert"]) == {"hook_attn_out", "hook_resid_mid"}
    assert model.hook_dict["blocks.0.hook_attn_out"].name == "blocks.0.attn.o.hook_out"


@pytest.mark.parametrize("family", sorted(POST_NORM))
def test_post_norm_blocks_refuse_weight_edits_but_embeddings_work(family, contexts):
    from mechunlearn.weights import orthogonalize_

    model = contexts(family).model
    before = {k: v.clone() for k, v in model.original_model.state_dict().items()}
    with pytest.raises(ArchitectureError, match="normalises its attn output"):
        orthogonalize_(model, torch.randn(64))
    after = model.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing edited
    ids = torch.randint(4, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    u = torch.randn(64, generator=torch.Generator().manual_seed(1))
    u = u / u.norm()
    with orthogonalize_(model, u, writers=["embed"]) as h, torch.no_grad():
        _, cache = model.run_with_cache(ids, attention_mask=torch.ones_like(ids),
                                        names_filter=["blocks.0.hook_resid_pre"])
        assert h.names == ["embed"]
    emb = cache["blocks.0.hook_resid_pre"]  # scaled embeddings: still direction-free
    assert float((emb @ u).abs().max()) <= 1e-5 * float(emb.abs().max())
    assert all(torch.equal(before[k], v) for k, v in model.original_model.state_dict().items())


def test_doctor_library_and_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mechunlearn.cli import app
    from mechunlearn.conformance import registry

    folder = build_tiny("qwen2", tmp_path / "qwen2")
    df = doctor(folder, checks=["hooks", "matches_hf"])
    assert list(df.columns)[:3] == ["check", "target", "status"] and passed(df)
    assert set(df["check"]) == {"hooks", "matches_hf"} and df.attrs["model_type"] == "qwen2"
    assert "transformer-lens" in df.attrs["versions"]
    assert "0 FAIL" in format_report(df)
    runner = CliRunner()
    res = runner.invoke(app, ["doctor", "--model", str(folder), "--checks", "hooks,extract",
                              "--csv", str(tmp_path / "t.csv")])
    assert res.exit_code == 0, res.output
    assert "0 FAIL" in res.output and (tmp_path / "t.csv").is_file()

    def broken(ctx):
        return [Row("broken", "a property the library relies on", FAIL, 1.0, 0.0, "forced")]

    monkeypatch.setitem(registry.CHECKS, "broken", registry.Check("broken", broken, "test"))
    res = runner.invoke(app, ["doctor", "--model", str(folder), "--checks", "broken"])
    assert res.exit_code == 1 and "1 FAIL" in res.output
    res = runner.invoke(app, ["doctor", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0
    res = runner.invoke(app, ["doctor", "--model", str(folder), "--checks", "nonsense"])
    assert res.exit_code == 2 and "--checks: unknown value(s) ['nonsense']" in res.output


def test_new_checks_fail_when_the_property_is_broken(tmp_path, monkeypatch):
    """gradients, bf16, unlearn and export_hf are not vacuous: a plain copy with other weights
    fails the gradient and bf16 comparisons, an undo() that does nothing fails unlearn."""
    from mechunlearn.conformance.dtypes import BF16_RTOL
    from mechunlearn.weights import EditHandle

    other = build_tiny("llama", tmp_path / "other", seed=1)
    ctx = Context(tiny_model("llama", tmp_path / "llama"), other)  # folder: different weights
    grads = CHECKS["gradients"].fn(ctx)
    assert any(r.status == FAIL and "autograd" in r.target for r in grads)
    assert all(r.status == OK for r in grads if "non-empty" in r.target)
    bf16 = CHECKS["bf16"].fn(ctx)  # the bf16 copy is loaded from the other folder
    bad = [r for r in bf16 if r.status == FAIL]
    assert bad and all(r.value > BF16_RTOL for r in bad if "fp32" in r.target)
    monkeypatch.setattr(EditHandle, "undo", lambda self: None)
    rows = CHECKS["unlearn"].fn(Context(ctx.model, tmp_path / "llama"))
    assert {r.target for r in rows if r.status == FAIL} == {
        "undo() restores every weight bit for bit", "logits after undo() = before"}


def test_gpt_neox_fused_qkv_round_trips(contexts):
    """GPT-NeoX's query_key_value is laid out head by head: hf_state_dict (which syncs the
    bridge's split q/k/v back) must give back the folder's tensor exactly (it wrote [q; k; v]
    before, and export_hf reloaded with logits 0.45 off)."""
    from mechunlearn.weights import hf_state_dict

    ctx = contexts("gpt_neox")
    state, plain = hf_state_dict(ctx.model), ctx.plain.state_dict()
    keys = [k for k in plain if "query_key_value" in k]
    assert len(keys) == 4 and all(torch.equal(state[k], plain[k]) for k in keys)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_sequence_classification_reward_model_is_refused_by_name(family, tmp_path):
    """A tiny random AutoModelForSequenceClassification (Llama- and BERT-style reward model)
    cannot be booted as a TransformerBridge (no LM head to unembed with): load_bridge raises a
    typed error naming the head, from the folder and from an in-memory model, instead of
    loading it as a causal LM with the reward head dropped."""
    import transformers as T

    from mechunlearn.models import load_bridge
    from mechunlearn.tiny_models import FAMILIES, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = FAMILIES[family](T, len(tok))
    cfg.num_labels = 1
    model = T.AutoModelForSequenceClassification.from_config(cfg).eval()
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    name = type(model).__name__
    assert name.endswith("ForSequenceClassification")
    for kw in ({}, {"hf_model": model}):
        with pytest.raises(ArchitectureError, match=f"{name} cannot be booted.*language-model"):
            load_bridge(tmp_path, **kw)
