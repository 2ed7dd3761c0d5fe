"""extract(): equals run_with_cache, padding-invariant, stops early, validates input."""

from __future__ import annotations

import pytest
import torch

from mechunlearn import (
    ConfigError,
    EmptyDataError,
    ShapeError,
    Site,
    UnknownHookError,
    extract,
    model_fingerprint,
    resid,
    tokenize,
)
from mechunlearn.features import run_and_capture
from mechunlearn.tokens import model_tokenizer

TEXTS = ["the quick brown fox", "lazy dog", "the fox jumps over the lazy dog again", "a ox"]


def _ref(model, texts, site, padding_side="right"):
    tb = tokenize(model_tokenizer(model), texts, padding_side=padding_side)
    _, cache = model.run_with_cache(tb.input_ids, attention_mask=tb.attention_mask,
                                    names_filter=[site.hook_name])
    return site.reduce(cache[site.hook_name], tb.attention_mask, tb.response_mask)


@pytest.mark.parametrize("pos", ["last", "mean", 0, -2])
@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post",
                                  "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"])
def test_extract_equals_run_with_cache(tiny_bridge, hook, pos):
    site = Site(hook, pos)
    f = extract(tiny_bridge, TEXTS, site, batch_size=3)
    torch.testing.assert_close(f.values, _ref(tiny_bridge, TEXTS, site), atol=1e-5, rtol=0)
    assert f.ids == ("0", "1", "2", "3") and f.site == site and f.d == 32


def test_padding_side_and_batch_size_do_not_change_features(tiny_bridge):
    s = [resid(1, "post", "mean"), resid(0, "mid", "last")]
    a = extract(tiny_bridge, TEXTS, s, batch_size=4)
    b = extract(tiny_bridge, TEXTS, s, batch_size=1, padding_side="left")
    c = extract(tiny_bridge, TEXTS, s, batch_size=2, padding_side="left")
    for site in s:
        torch.testing.assert_close(a[site].values, b[site].values, atol=1e-5, rtol=0)
        torch.testing.assert_close(a[site].values, c[site].values, atol=1e-5, rtol=0)


def test_response_mean_pairs(tiny_bridge):
    pairs = [("the quick ", "brown fox"), ("lazy ", "dog jumps")]
    site = Site("blocks.1.hook_resid_post", "response_mean")
    f = extract(tiny_bridge, pairs, site)
    tb = tokenize(model_tokenizer(tiny_bridge), pairs)  # what extract tokenizes with
    assert tb.response_mask is not None and bool(tb.response_mask[:, 0].eq(0).all())
    _, cache = tiny_bridge.run_with_cache(tb.input_ids, attention_mask=tb.attention_mask)
    torch.testing.assert_close(f.values, site.reduce(cache[site.hook_name], tb.attention_mask, tb.response_mask))


def test_all_positions_and_heads(tiny_bridge):
    f = extract(tiny_bridge, TEXTS, Site("blocks.0.hook_resid_post", "all"))
    assert f.values.ndim == 3 and f.mask is not None and f.mask.shape == f.values.shape[:2]
    h = extract(tiny_bridge, TEXTS, Site("blocks.0.attn.hook_z", "last", head=1))
    assert h.values.shape == (4, 16)


def test_stops_early(tiny_bridge):
    """Capturing layer 0 never runs layer 1 (its hooks do not fire)."""
    fired = []
    tb = tokenize(model_tokenizer(tiny_bridge), TEXTS)
    run_and_capture(tiny_bridge, tb, ["blocks.0.hook_resid_post"])  # first use self-checks
    hp = tiny_bridge.hook_dict["blocks.1.hook_resid_pre"]
    handle = hp.add_hook(lambda a, hook: fired.append(1))
    try:
        run_and_capture(tiny_bridge, tb, ["blocks.0.hook_resid_post"])
        assert fired == []
        run_and_capture(tiny_bridge, tb, ["blocks.1.hook_resid_post"])
        assert fired == [1]
    finally:
        handle.hook.remove()
        hp.fwd_hooks.remove(handle)


def test_aliases_share_one_hook(tiny_bridge):
    s1, s2 = Site("blocks.1.hook_resid_post"), Site("blocks.1.hook_out")
    out = extract(tiny_bridge, TEXTS, [s1, s2])
    torch.testing.assert_close(out[s1].values, out[s2].values)


def test_native_model(native_bridge):
    ids = torch.randint(0, 100, (3, 6))
    am = torch.ones_like(ids)
    am[2, 4:] = 0
    site = resid(1, "post", "mean")
    f = extract(native_bridge, ids, site, attention_mask=am, batch_size=2)
    _, cache = native_bridge.run_with_cache(ids, attention_mask=am)
    torch.testing.assert_close(f.values, site.reduce(cache[site.hook_name], am), atol=1e-5, rtol=0)


def test_bad_inputs(tiny_bridge):
    with pytest.raises(UnknownHookError):
        extract(tiny_bridge, TEXTS, Site("blocks.9.hook_resid_post"))
    with pytest.raises(EmptyDataError):
        extract(tiny_bridge, [], resid(0))
    with pytest.raises(ShapeError):
        extract(tiny_bridge, TEXTS, resid(0), ids=["a"])
    with pytest.raises(ConfigError):
        extract(tiny_bridge, TEXTS, resid(0), ids=["a", "a", "b", "c"])
    with pytest.raises(ConfigError):
        extract(tiny_bridge, TEXTS, resid(0), batch_size=0)
    with pytest.raises(ConfigError):
        extract(tiny_bridge, TEXTS, [])
    with pytest.raises(ConfigError):
        extract(tiny_bridge, TEXTS, "blocks.0.hook_resid_post")  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        extract(tiny_bridge, torch.zeros(3, dtype=torch.long), resid(0))
    with pytest.raises(ConfigError):
        extract(tiny_bridge, ["ok", ("a", "b")], resid(0))  # type: ignore[list-item]


def test_fingerprint_tracks_weights(tiny_bridge):
    fp = model_fingerprint(tiny_bridge)
    w = tiny_bridge.original_model.transformer.h[0].mlp.c_fc.weight
    with torch.no_grad():
        old = w[0, 0].clone()
        w[0, 0] += 1e-3
        try:
            assert model_fingerprint(tiny_bridge) != fp
        finally:
            w[0, 0] = old
    assert model_fingerprint(tiny_bridge) == fp


@pytest.mark.slow
def test_real_encoder_matches_hf(minilm):
    """Pretrained all-MiniLM-L6-v2: our features equal Hugging Face's hidden states."""
    texts = ["A short sentence.", "Another, somewhat longer sentence about the weather today."]
    from transformers import AutoModel

    from mechunlearn.models import minilm_path

    tb = tokenize(minilm.tokenizer, texts)
    plain = AutoModel.from_pretrained(str(minilm_path())).eval()  # independent HF copy
    with torch.no_grad():
        hf = plain(tb.input_ids, attention_mask=tb.attention_mask, output_hidden_states=True)
    assert len(hf.hidden_states) == 7
    f = extract(minilm, texts, [resid(3, "post", "mean"), resid(5, "post", "mean")])
    for layer in (3, 5):
        ref = Site("x", "mean").reduce(hf.hidden_states[layer + 1], tb.attention_mask)
        torch.testing.assert_close(f[resid(layer, "post", "mean")].values, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_minilm_fingerprint_is_reproducible(minilm):
    """The checkpoint lacks the MLM head; its random init is seeded so every load agrees."""
    from mechunlearn.models import load_minilm

    assert model_fingerprint(load_minilm()) == model_fingerprint(minilm)
