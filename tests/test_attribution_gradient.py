"""Gradient-similarity features on the tiny GPT-2 bridge (backward hooks, losses, projection)."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.attribution import GradSim, gradient_features
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.hooks import add_hooks
from mechunlearn.sites import resid

PAIRS = [("the quick", " brown fox"), ("the lazy", " dog jumps"), ("over the", " lazy dog"),
         ("the dog", " jumps over the fox")]


def _autograd_reference(model, pair, layer):
    """Activation gradient via a forward hook + autograd.grad (independent path)."""
    from mechunlearn.attribution.gradient import _batch, _response_logprob

    tb = _batch(model, [pair])
    store = {}

    def keep(act):
        store["a"] = act
        return act

    handles = add_hooks(model, [(f"blocks.{layer}.hook_resid_post", keep)])
    try:
        with torch.enable_grad():
            _, mean = _response_logprob(model, tb)
            (g,) = torch.autograd.grad(-mean.sum(), [store["a"]])
    finally:
        handles.remove()
    return resid(layer, position="response_mean").reduce(g, tb.attention_mask, tb.response_mask)[0]


def test_activation_gradients_match_autograd_and_batching(tiny_bridge):
    site = resid(1, position="response_mean")
    f = gradient_features(tiny_bridge, PAIRS, site, batch_size=4)
    f1 = gradient_features(tiny_bridge, PAIRS, site, batch_size=1)
    assert f.values.shape == (4, 32) and f.site == site
    assert torch.allclose(f.values, f1.values, atol=1e-6)
    ref = _autograd_reference(tiny_bridge, PAIRS[2], 1)
    assert torch.allclose(f.values[2], ref.float(), atol=1e-6)
    assert all(p.grad is None for p in tiny_bridge.parameters())
    assert not any(h for hp in tiny_bridge.hook_dict.values() for h in hp.bwd_hooks)


def test_gradsim_self_is_top_and_dpo(tiny_bridge):
    site = resid(0, position="response_mean")
    tr = gradient_features(tiny_bridge, PAIRS, site)
    q = gradient_features(tiny_bridge, [PAIRS[1]], site)
    a = GradSim(tr, k=2).attribute(q)
    assert a.indices[0] == 1 and a.method == "gradsim"
    triples = [(p, r, " the the") for p, r in PAIRS]
    d = gradient_features(tiny_bridge, triples, site, loss="dpo", ref_model=tiny_bridge)
    # at the reference model the DPO gradient is beta/2 times the chosen-minus-rejected
    # sum-log-prob gradient: finite and non-zero
    assert d.values.shape == (4, 32) and float(d.values.norm()) > 0


def test_param_gradients_and_projection(tiny_bridge):
    names = [n for n, _ in tiny_bridge.named_parameters()][4:6]
    full = gradient_features(tiny_bridge, PAIRS[:3], params=names)
    n_par = sum(dict(tiny_bridge.named_parameters())[n].numel() for n in names)
    assert full.values.shape == (3, n_par)
    proj = gradient_features(tiny_bridge, PAIRS[:3], params=names, projection_dim=4096, seed=1)
    # count sketch preserves inner products in expectation; with 4096 buckets, closely
    g_full = full.values @ full.values.T
    g_proj = proj.values @ proj.values.T
    assert torch.allclose(g_proj, g_full, rtol=0.1, atol=0.05 * float(g_full.abs().max()))


def test_gradient_bad_input(tiny_bridge):
    with pytest.raises(ConfigError, match="last"):
        gradient_features(tiny_bridge, PAIRS, resid(0))
    with pytest.raises(ConfigError, match="ref_model"):
        gradient_features(tiny_bridge, [(p, r, r) for p, r in PAIRS], resid(0, position="mean"),
                          loss="dpo")
    with pytest.raises(ConfigError, match="expects"):
        gradient_features(tiny_bridge, [("a", "b", "c")], resid(0, position="mean"))
    with pytest.raises(EmptyDataError):
        gradient_features(tiny_bridge, [], resid(0, position="mean"))
    with pytest.raises(ConfigError, match="Unknown parameter"):
        gradient_features(tiny_bridge, PAIRS, params=["nope"])
