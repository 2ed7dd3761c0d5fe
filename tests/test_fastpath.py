"""Fast paths prove themselves: a broken KV cache is detected at first use and replaced by
the reference path with one warning (the transformers 5.24 failure mode: the cache stays
empty, so each new token attends only to itself)."""

from __future__ import annotations

import warnings

import pytest
import torch

from mechunlearn import fastpath, lm
from mechunlearn.models import tiny_gpt2
from mechunlearn.tokens import model_tokenizer, tokenize

PROMPTS = ["the quick brown fox", "lazy dog", "the dog jumps over the lazy fox", "fox"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_gpt2(n_layer=2, d_model=32)


@pytest.fixture(autouse=True)
def _fresh_checks():
    fastpath.reset()
    yield
    fastpath.reset()


def _decode(model, **kw):
    tok = model_tokenizer(model)
    return lm.greedy(model, tokenize(tok, PROMPTS), 10, None, tok.pad_token_id, **kw)


def _forgetful(step_factory):
    """A step whose cache is dropped after every call (each token sees only itself)."""
    def factory(m):
        step = step_factory(m)
        return lambda ids, mask, pos, past: (step(ids, mask[:, -ids.shape[1]:], pos, None)[0],
                                             None)
    return factory


def test_cached_paths_pass_their_check_and_match_full(model) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastpath.FastPathMismatchWarning)
        fast = _decode(model)
        bridge = _decode(model, kv_cache=True)
    assert fast == bridge == _decode(model, kv_cache=False)
    st = fastpath.status()
    assert any(k.startswith("hf-kv-cache") and v for k, v in st.items())
    assert any(k.startswith("bridge-kv-cache") and v for k, v in st.items())


@pytest.mark.parametrize("path,kw", [("_hf_step", {}), ("_bridge_step", {"kv_cache": True})])
def test_broken_cache_falls_back_with_one_warning(model, monkeypatch, path, kw) -> None:
    full = _decode(model, kv_cache=False)
    monkeypatch.setattr(lm, path, _forgetful(getattr(lm, path)))
    # the broken step really is wrong (so the check below has something to catch)
    fastpath._STATE["hf-kv-cache:GPT2LMHeadModel"] = True
    fastpath._STATE["bridge-kv-cache:TransformerBridge"] = True
    assert _decode(model, **kw) != full
    fastpath.reset()
    with pytest.warns(fastpath.FastPathMismatchWarning, match="transformers"):
        out = _decode(model, **kw)
    assert out == full
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastpath.FastPathMismatchWarning)
        assert _decode(model, **kw) == full  # warned once; the reference path stays in use
    assert not any(fastpath.status().values())


def test_close_rule() -> None:
    a = torch.tensor([[1.0, -2.0, 10.0]])
    assert fastpath.close(a, a + 1e-4)[0]
    assert not fastpath.close(a, a + 1.0)[0]
    assert not fastpath.close(a, torch.zeros(1, 2))[0]
    assert not fastpath.close(a * float("nan"), a)[0]


def test_early_stopped_extraction_checks_itself(model, monkeypatch) -> None:
    import mechunlearn as mu
    from mechunlearn import features

    site = mu.resid(0, "post", position="last")
    ref = mu.extract(model, PROMPTS, site)
    assert fastpath.status().get("early-stop:TransformerBridge") is True
    fastpath.reset()
    real = features._capture

    def corrupt(model, batch, canon, stop_early):  # the early-stopped pass goes wrong
        acts = real(model, batch, canon, stop_early)
        return {k: v + 1.0 for k, v in acts.items()} if stop_early else acts

    monkeypatch.setattr(features, "_capture", corrupt)
    with pytest.warns(fastpath.FastPathMismatchWarning, match="Early-stopped extraction"):
        got = mu.extract(model, PROMPTS, site)
    assert torch.allclose(got.values, ref.values)
    assert torch.allclose(mu.extract(model, PROMPTS, site).values, ref.values)


@pytest.mark.parametrize("kv_cache", [None, False])
def test_position_indexed_edit_in_batched_generation_equals_alone(model, kv_cache) -> None:
    """Steer(positions=-1) lands on each row's last real token, not on padding: every row of
    a batch of prompts of different lengths equals that prompt decoded alone."""
    import mechunlearn as mu
    from mechunlearn.interventions import Steer

    tok = model_tokenizer(model)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 5
    steer = Steer(v, site=mu.Site("blocks.0.hook_resid_post"), positions=-1)
    with mu.apply(model, steer):
        batched = lm.greedy(model, tokenize(tok, PROMPTS), 6, None, tok.pad_token_id,
                            kv_cache=kv_cache)
        alone = [lm.greedy(model, tokenize(tok, [p]), 6, None, tok.pad_token_id,
                           kv_cache=kv_cache)[0] for p in PROMPTS]
    plain = lm.greedy(model, tokenize(tok, PROMPTS), 6, None, tok.pad_token_id)
    assert batched == alone
    assert batched != plain  # the edit did something
