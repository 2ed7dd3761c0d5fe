"""Hooks whose tensor is not [batch, pos, ...]: every Site and Intervention knows the layout.

The tiny model has 2 heads and the inputs have 2 tokens, so reducing or editing over the
head axis instead of the position axis gives tensors of the same shape: only values tell.
"""

from __future__ import annotations

import pytest
import torch

from mechunlearn.errors import LayoutError, ShapeError
from mechunlearn.features import extract
from mechunlearn.hooks import apply
from mechunlearn.interventions import Patch, Steer
from mechunlearn.sites import Site, hook_layout

pytestmark = pytest.mark.usefixtures("one_thread")

PAT = "blocks.0.attn.hook_pattern"
TOKS = torch.tensor([[5, 6], [7, 8]])  # seq len 2 == n_heads 2


def _pattern(model, toks=TOKS):
    _, cache = model.run_with_cache(toks, names_filter=[PAT])
    return cache[PAT]  # [batch, head, q, k]


def test_layouts_by_name():
    assert hook_layout(PAT) == "head_q_k"
    assert hook_layout("blocks.1.attn.hook_attn_scores") == "head_q_k"
    assert hook_layout("blocks.0.attn.hook_z") == "pos"
    assert hook_layout("blocks.0.hook_resid_post") == "pos"
    assert hook_layout("embed.hook_in") == "tokens"


def test_pattern_reduce_uses_query_axis(tiny_bridge):
    pat = _pattern(tiny_bridge)
    assert pat.shape == (2, 2, 2, 2)
    last = Site(PAT, "last").reduce(pat)
    # last query row of every head, flattened [head * key]; not the last head's pattern
    assert torch.equal(last, pat[:, :, -1, :].reshape(2, -1))
    assert not torch.equal(last, pat[:, -1].reshape(2, -1))
    h1 = Site(PAT, 0, head=1).reduce(pat)
    assert torch.equal(h1, pat[:, 1, 0, :])
    mean = Site(PAT, "mean", head=0).reduce(pat)
    assert torch.allclose(mean, pat[:, 0].mean(1))


def test_pattern_reduce_respects_padding(tiny_bridge):
    pat = _pattern(tiny_bridge)
    mask = torch.tensor([[1, 1], [1, 0]])
    got = Site(PAT, "last", head=0).reduce(pat, attention_mask=mask)
    assert torch.equal(got[0], pat[0, 0, 1])
    assert torch.equal(got[1], pat[1, 0, 0])  # row 1's last real query is 0


def test_extract_refuses_pattern_with_typed_error(tiny_bridge):
    with pytest.raises(LayoutError, match="hook_z"):
        extract(tiny_bridge, TOKS, Site(PAT, "last"))


def test_token_id_hook_refused(tiny_bridge):
    with pytest.raises(LayoutError, match="token ids"):
        extract(tiny_bridge, TOKS, Site("embed.hook_in", "last"))
    with pytest.raises(LayoutError):
        Site("embed.hook_in").reduce(TOKS)


def test_patch_pattern_edits_query_position_not_head(tiny_bridge):
    pat = _pattern(tiny_bridge)
    row = torch.tensor([0.25, 0.75])
    iv = Patch(row, site=Site(PAT, head=1), positions=0)
    seen = {}
    with apply(tiny_bridge, iv):
        _, cache = tiny_bridge.run_with_cache(TOKS, names_filter=[PAT])
        seen["pat"] = cache[PAT]
    edited = seen["pat"]
    # head 1, query 0 replaced; everything else unchanged
    assert torch.equal(edited[:, 1, 0], row.expand(2, 2))
    assert torch.equal(edited[:, 0], pat[:, 0])
    assert torch.equal(edited[:, 1, 1], pat[:, 1, 1])


def test_steer_pattern_all_heads_query_position(tiny_bridge):
    pat = _pattern(tiny_bridge)
    # without head: the vector is [head * key] per query position
    v = torch.arange(4, dtype=torch.float32)
    with apply(tiny_bridge, Steer(v, site=Site(PAT), positions=-1)):
        _, cache = tiny_bridge.run_with_cache(TOKS, names_filter=[PAT])
    edited = cache[PAT]
    assert torch.allclose(edited[:, :, 1], pat[:, :, 1] + v.view(2, 2))
    assert torch.equal(edited[:, :, 0], pat[:, :, 0])


def test_hook_z_positions_are_axis_1(tiny_bridge):
    z = "blocks.0.attn.hook_z"
    _, cache = tiny_bridge.run_with_cache(TOKS, names_filter=[z])
    a = cache[z]  # [batch, pos, head, d_head]
    v = torch.ones(a.shape[-1])
    with apply(tiny_bridge, Steer(v, site=Site(z, head=0), positions=0)):
        _, c2 = tiny_bridge.run_with_cache(TOKS, names_filter=[z])
    b = c2[z]
    assert torch.allclose(b[:, 0, 0], a[:, 0, 0] + 1)
    assert torch.equal(b[:, 1], a[:, 1])
    assert torch.equal(b[:, 0, 1], a[:, 0, 1])
    feats = extract(tiny_bridge, TOKS, Site(z, 0, head=1))
    assert torch.allclose(feats.values, a[:, 0, 1], atol=1e-6)


def test_head_on_headless_hook_is_refused(tiny_bridge):
    v = torch.ones(32)
    with pytest.raises(ShapeError, match="head"):
        with apply(tiny_bridge, Steer(v, site=Site("blocks.0.hook_resid_post", head=0))):
            tiny_bridge(TOKS, return_type=None)
