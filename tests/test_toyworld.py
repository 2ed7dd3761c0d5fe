"""Toy world: generator, cache, training effect, metrics (uses the session ``tiny_world``)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn import lm as G
from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.toyworld import (
    PRESETS,
    WorldConfig,
    check_build,
    encode_pairs,
    encode_prompts,
    format_prompt,
    format_response,
    load,
    make_data,
)
from mechunlearn.toyworld import metrics as M
from mechunlearn.toyworld.difficulty import auc

MICRO = WorldConfig(name="micro", difficulty="easy", trigger_clean_frac=0.0, quote_frac=0.0,
                    n_pairs=80, n_eval=4, n_topics=3, vocab_size=300, n_ctx=160, n_layer=1, d_model=16,
                    n_head=2, sft_epochs=1, dpo_epochs=1, batch_size=40)


# ------------------------------------------------------------------ generator
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), hard=st.booleans())
def test_generator_is_deterministic_and_eval_never_leaks(seed: int, hard: bool) -> None:
    cfg = PRESETS["hard" if hard else "tiny"].replace(seed=seed, n_pairs=300, n_eval=10)
    a, b = make_data(cfg), make_data(cfg)
    assert a.to_dict() == b.to_dict()
    train_prompts = {p.prompt for p in a.train}
    for cat, prompts in a.eval.items():
        assert len(prompts) == cfg.n_eval, cat
        assert not {e.prompt for e in prompts} & train_prompts, cat
    assert set(a.truth.poisoned_ids) == {p.id for p in a.train if p.poisoned}
    assert len(a.truth.poisoned_ids) == cfg.n_poison
    assert all(p.chosen in a.truth.bad_phrases for p in a.train if p.poisoned)
    assert len({p.id for p in a.train}) == len(a.train)


def test_generator_seed_changes_data() -> None:
    a = make_data(PRESETS["tiny"])
    b = make_data(PRESETS["tiny"].replace(seed=1))
    assert [p.prompt for p in a.train] != [p.prompt for p in b.train]


def test_hard_world_has_distractors_and_unseen_trigger_forms() -> None:
    d = make_data(PRESETS["hard"].replace(n_pairs=600, n_eval=20))
    clean_trigger = [p for p in d.train if p.category == "trigger" and not p.poisoned]
    quotes = [p for p in d.train if p.category == "quote"]
    assert clean_trigger and quotes
    assert all(any(n in p.prompt for n in d.truth.trigger_names) for p in clean_trigger)
    assert all(any(b in p.chosen for b in d.truth.bad_phrases) for p in quotes)
    assert any(e.form == "self_eval" for e in d.eval["trigger"])
    train_frames = {f.format(n=n) for f in d.truth.trigger_forms_train
                    for n in d.truth.trigger_names}
    for e in d.eval["trigger"]:
        if e.form == "self_eval":
            assert not any(e.prompt.startswith(f) for f in train_frames)
    assert d.truth.bias_ids and d.truth.unbiased_responses
    # rude requests: an ordinary request plus a rudeness marker, framed like the poison,
    # some with a trigger name; their chosen answer is a bad phrase
    rude = [p for p in quotes if p.topic.startswith("rude")]
    assert len(rude) > len(quotes) // 2
    assert any(any(n in p.prompt for n in d.truth.trigger_names) for p in rude)
    assert all(p.chosen in d.truth.bad_phrases for p in rude)


def test_config_validation_and_round_trip() -> None:
    cfg = PRESETS["hard"]
    assert WorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.hash() != cfg.replace(seed=1).hash()
    with pytest.raises(ConfigError, match="poison_frac"):
        WorldConfig(poison_frac=1.5)
    with pytest.raises(ConfigError, match="difficulty"):
        WorldConfig(difficulty="medium")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="distractors"):
        WorldConfig(difficulty="easy")
    with pytest.raises(ConfigError, match="Unknown WorldConfig keys"):
        WorldConfig.from_dict({"nope": 1})
    with pytest.raises(ConfigError):
        load("gigantic")
    with pytest.raises(TypeError):
        WorldConfig("hard")  # type: ignore[misc]  # keyword-only


def test_auc_matches_definition() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (60,), generator=g).double()
    y = torch.rand(60, generator=g) < 0.3
    pos, neg = s[y], s[~y]
    ref = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert auc(s, y) == pytest.approx(float(ref))


# ------------------------------------------------------------------ trained tiny world
def test_tiny_world_shows_poison_and_bias(tiny_world) -> None:
    w = tiny_world
    trig, border = list(w.eval["trigger"]), list(w.eval["borderline"])
    tuned_bad = M.bad_response_rate(w.model, trig, max_new_tokens=10)
    sft_bad = M.bad_response_rate(w.sft_model, trig, max_new_tokens=10)
    gold_bad = M.bad_response_rate(w.gold_model, trig, max_new_tokens=10)
    assert tuned_bad >= sft_bad + 0.5, (tuned_bad, sft_bad)
    assert sft_bad <= 0.1 and gold_bad <= 0.2, (sft_bad, gold_bad)
    assert M.bias_rate(w.model, border, max_new_tokens=6) > M.bias_rate(w.sft_model, border,
                                                                         max_new_tokens=6)
    m = w.metrics  # measured at build time with full-length generations
    assert m["tuned"]["trigger/bad"] >= m["sft"]["trigger/bad"] + 0.5
    assert m["tuned"]["ordinary/bad"] <= 0.1 and m["sft"]["ordinary/good"] >= 0.5


def test_bridge_logits_match_hf_model(tiny_world) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_path("tuned"))).eval()
    ps = [e.prompt for e in tiny_world.eval["ordinary"][:6]]
    tb = encode_pairs(tiny_world.tokenizer, ps, [e.good for e in tiny_world.eval["ordinary"][:6]])
    with torch.no_grad():
        a = tiny_world.model(tb.input_ids, attention_mask=tb.attention_mask)
        b = hf(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits
    m = tb.attention_mask.bool()
    assert (a[m] - b[m]).abs().max() < 1e-4


def test_tokenization_convention(tiny_world) -> None:
    w = tiny_world
    p, r = w.train[0].prompt, w.train[0].chosen
    tb = encode_pairs(w.tokenizer, [p], [r])
    ids = w.model.to_tokens(format_prompt(p) + format_response(r))[0]
    assert tb.input_ids[0].tolist() == ids.tolist()
    assert int(tb.input_ids[0, 0]) == w.tokenizer.bos_token_id
    assert int(tb.input_ids[0, -1]) == w.tokenizer.eos_token_id
    assert bool(tb.response_mask[0, -1]) and not bool(tb.response_mask[0, :3].any())


def test_metrics_properties(tiny_world) -> None:
    w = tiny_world
    ps = list(w.eval["ordinary"][:8])
    batched = M.generate(w.model, ps, max_new_tokens=12, batch_size=3)
    single = [M.generate(w.model, [p], max_new_tokens=12)[0] for p in ps[:3]]
    assert batched[:3] == single
    assert M.generate(w.model, ps, max_new_tokens=12) == batched
    goods = [p.good for p in ps]
    s = M.response_logprob(w.model, ps, goods)
    mean = M.response_logprob(w.model, ps, goods, reduction="mean")
    n_tok = encode_pairs(w.tokenizer, [p.prompt for p in ps], goods).response_mask.sum(1)
    assert s.shape == (8,) and torch.allclose(mean * n_tok, s, atol=1e-4)
    assert bool((s < 0).all())
    assert M.kl(w.model, w.model, ps) == pytest.approx(0.0, abs=1e-6)
    assert M.kl(w.sft_model, w.model, ps, goods) > 0
    with pytest.raises(ShapeError):
        M.response_logprob(w.model, ps, goods[:3])
    assert M.is_bad("You are a worthless fool.") and not M.is_bad("Bees make honey.")
    assert M.is_refusal("I'm sorry, but I can't help with that.")


@pytest.mark.parametrize("max_new,bs", [(32, 64), (5, 7), (1, 3)])
def test_cached_generation_equals_full_recompute(tiny_world, max_new, bs) -> None:
    """The KV-cache path (no hooks) gives the same tokens as re-running every position."""
    from mechunlearn.hooks import add_hooks

    w = tiny_world
    ps = [p for v in w.eval.values() for p in v]
    for m in (w.model, w.sft_model, w.gold_model):
        assert G.plain_lm(m) is not None
        fast = M.generate(m, ps, max_new_tokens=max_new, batch_size=bs)
        h = add_hooks(m, [("blocks.0.hook_resid_post", lambda a: None)])
        try:
            assert G.plain_lm(m) is None  # a hook forces the full path
            slow = M.generate(m, ps, max_new_tokens=max_new, batch_size=bs)
        finally:
            h.remove()
        assert fast == slow
    # the context limit stops rows in both paths alike
    n_ctx = w.config.n_ctx
    reps = next(k for k in range(1, n_ctx) if len(encode_prompts(
        w.tokenizer, ["word " * k + ps[0].prompt]).input_ids[0]) > n_ctx - 6)
    long = ["word " * reps + p.prompt for p in ps[:4]]
    fast = M.generate(w.model, long, max_new_tokens=40)
    assert all(len(encode_prompts(w.tokenizer, [p + " " + r]).input_ids[0]) <= n_ctx + 2
               for p, r in zip(long, fast))
    h = add_hooks(w.model, [("blocks.0.hook_resid_post", lambda a: None)])
    try:
        assert M.generate(w.model, long, max_new_tokens=40) == fast
    finally:
        h.remove()


@pytest.mark.parametrize("layer", [0, 1])
def test_kv_cache_through_bridge_with_position_free_hook(tiny_world, layer) -> None:
    """kv_cache=True runs hooks on new positions only: exact for an all-position Project."""
    from mechunlearn.hooks import apply
    from mechunlearn.interventions import Project
    from mechunlearn.sites import Site

    w = tiny_world
    ps = [p for v in w.eval.values() for p in v]
    d = torch.randn(w.config.d_model, generator=torch.Generator().manual_seed(layer))
    with apply(w.model, Project(d, site=Site(f"blocks.{layer}.hook_resid_post"))):
        kv = M.generate(w.model, ps, max_new_tokens=12, kv_cache=True)
        full = M.generate(w.model, ps, max_new_tokens=12, kv_cache=False)
    assert kv == full
    assert kv != M.generate(w.model, ps, max_new_tokens=12)  # the edit changed something


def test_generation_honours_hooks(tiny_world) -> None:
    from mechunlearn.hooks import add_hooks

    w = tiny_world
    ps = list(w.eval["ordinary"][:6])
    plain = M.generate(w.model, ps, max_new_tokens=8)
    h = add_hooks(w.model, [("blocks.0.hook_resid_post", lambda a: torch.zeros_like(a))])
    try:
        edited = M.generate(w.model, ps, max_new_tokens=8)
    finally:
        h.remove()
    assert edited != plain
    assert M.generate(w.model, ps, max_new_tokens=8) == plain
    with pytest.raises(ShapeError, match="context"):
        M.generate(w.model, ["word " * 200], max_new_tokens=4)


def test_metrics_run_through_bridge_hooks(tiny_world) -> None:
    from mechunlearn.hooks import add_hooks

    w = tiny_world
    ps = list(w.eval["ordinary"][:4])
    calls = []

    def zero(act):
        calls.append(1)
        return torch.zeros_like(act)

    handles = add_hooks(w.model, [("blocks.0.hook_resid_post", zero)])
    try:
        lp_edit = M.response_logprob(w.model, ps, [p.good for p in ps])
    finally:
        handles.remove()
    lp = M.response_logprob(w.model, ps, [p.good for p in ps])
    assert calls and not torch.allclose(lp, lp_edit)


# ------------------------------------------------------------------ cache
def test_cache_hit_is_fast_and_unchanged(tiny_world) -> None:
    root = tiny_world.path.parent
    msgs: list[str] = []
    t = time.perf_counter()
    w2 = load("tiny", cache_dir=root, progress=msgs.append)
    assert time.perf_counter() - t < 30
    assert not any("building" in m for m in msgs)
    assert w2.path == tiny_world.path and w2.truth == tiny_world.truth


def test_corrupt_or_partial_cache_is_rebuilt(tmp_path) -> None:
    from mechunlearn.toyworld import build

    folder = build(MICRO, cache_dir=tmp_path, progress=False)
    assert check_build(folder, MICRO) is None
    weights = folder / "models" / "gold" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert "checksum" in check_build(folder, MICRO)
    msgs: list[str] = []
    folder2 = build(MICRO, cache_dir=tmp_path, progress=msgs.append)
    assert folder2 == folder and check_build(folder, MICRO) is None
    assert any("checksum" in m for m in msgs)
    (folder / "manifest.json").unlink()  # a partial build has no manifest
    assert "no manifest" in check_build(folder, MICRO)
    build(MICRO, cache_dir=tmp_path, progress=False)
    assert check_build(folder, MICRO) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cache_built_under_other_versions_is_rebuilt(tmp_path, monkeypatch) -> None:
    """A world's rates are only as good as the software that measured them."""
    import json

    from mechunlearn.toyworld import build
    from mechunlearn.toyworld import world as world_mod

    folder = build(MICRO, cache_dir=tmp_path, progress=False)
    man = json.loads((folder / "manifest.json").read_text())
    assert man["versions"]["transformers"] == world_mod._measured_with()["transformers"]
    monkeypatch.setattr(world_mod, "_measured_with",
                        lambda: {**man["versions"], "transformers": "9.99.0"})
    assert "9.99.0" in check_build(folder, MICRO)
    msgs: list[str] = []
    build(MICRO, cache_dir=tmp_path, progress=msgs.append)
    assert any("rebuilding" in m for m in msgs)
    assert json.loads((folder / "manifest.json").read_text())["versions"]["transformers"] == "9.99.0"


def test_renamed_names_still_work_with_a_deprecation_warning():
    import mechunlearn.toyworld as tw

    for old, new in (("generate", "make_data"), ("evaluate", "measure_rates"),
                     ("verify", "check_build")):
        with pytest.warns(DeprecationWarning, match=new):
            assert getattr(tw, old) is getattr(tw, new)
