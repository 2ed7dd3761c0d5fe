"""Site: validation, naming, and token reduction under left and right padding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn import (
    ConfigError,
    EmptyDataError,
    ShapeError,
    Site,
    UnknownHookError,
    resid,
    sites,
)
from mechunlearn.sites import last_real_index


def test_unknown_hook_lists_closest(tiny_bridge):
    with pytest.raises(UnknownHookError) as e:
        Site("blocks.1.hook_resid_pots").resolve(tiny_bridge)
    assert "blocks.1.hook_resid_post" in str(e.value)
    assert e.value.suggestions[0] == "blocks.1.hook_resid_post"
    with pytest.raises(UnknownHookError):
        resid(7).resolve(tiny_bridge)  # layer beyond the model


def test_bad_site_config():
    with pytest.raises(ConfigError):
        Site("blocks.0.hook_resid_post", position="first")
    with pytest.raises(ConfigError):
        Site("")
    with pytest.raises(ConfigError):
        Site("blocks.0.hook_resid_post", head=-1)
    with pytest.raises(ConfigError):
        resid(0, "end")  # type: ignore[arg-type]


def test_helpers_and_roundtrip(tiny_bridge):
    s = resid(1, "pre", "mean")
    assert s.hook_name == "blocks.1.hook_resid_pre" and s.layer == 1
    assert Site.from_dict(s.to_dict()) == s
    all_sites = sites(tiny_bridge, ("resid_pre", "mlp_out"))
    assert [x.hook_name for x in all_sites] == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out",
        "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out",
    ]
    with pytest.raises(ConfigError):
        sites(tiny_bridge, "resid_end")


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5), d=st.integers(1, 4),
       pos=st.sampled_from(["last", "mean", 0, 1, -1, -2]))
def test_left_and_right_padding_agree(lengths, d, pos):
    """Reducing a right-padded and a left-padded batch of the same rows gives the same vectors."""
    pos_ok = pos if isinstance(pos, str) else (pos if pos >= 0 else pos)
    p = max(lengths)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, d, generator=g) for n in lengths]
    right = torch.zeros(len(rows), p, d)
    left = torch.full((len(rows), p, d), 99.0)
    mr = torch.zeros(len(rows), p, dtype=torch.long)
    ml = torch.zeros(len(rows), p, dtype=torch.long)
    for i, r in enumerate(rows):
        right[i, : len(r)] = r
        mr[i, : len(r)] = 1
        left[i, p - len(r):] = r
        ml[i, p - len(r):] = 1
    site = Site("blocks.0.hook_resid_post", pos_ok)
    if isinstance(pos, int) and any((pos >= n) or (-pos > n) for n in lengths):
        with pytest.raises(ShapeError):
            site.reduce(right, mr)
        return
    a, b = site.reduce(right, mr), site.reduce(left, ml)
    torch.testing.assert_close(a, b)
    expect = torch.stack([
        r[-1] if pos == "last" else r.mean(0) if pos == "mean" else r[pos] for r in rows
    ])
    torch.testing.assert_close(a, expect)


def test_response_mean_and_heads():
    acts = torch.arange(24, dtype=torch.float32).view(1, 4, 2, 3)
    am = torch.tensor([[1, 1, 1, 0]])
    rm = torch.tensor([[0, 1, 1, 1]])
    s = Site("blocks.0.attn.hook_z", "response_mean", head=1)
    out = s.reduce(acts, am, rm)  # response tokens 1, 2 (3 is padding), head 1
    torch.testing.assert_close(out, acts[0, 1:3, 1].mean(0, keepdim=True))
    assert Site("blocks.0.attn.hook_z", "last").reduce(acts).shape == (1, 6)
    with pytest.raises(ShapeError):
        Site("blocks.0.attn.hook_z", "last", head=5).reduce(acts)
    with pytest.raises(ShapeError):
        Site("x", "last", head=0).reduce(torch.zeros(1, 2, 3))
    with pytest.raises(ConfigError):
        Site("x", "response_mean").reduce(torch.zeros(1, 2, 3))
    with pytest.raises(EmptyDataError):
        Site("x", "response_mean").reduce(torch.zeros(1, 2, 3), None, torch.zeros(1, 2))
    with pytest.raises(ShapeError):
        Site("x", "mean").reduce(torch.zeros(1, 2, 3), torch.ones(1, 3))
    with pytest.raises(EmptyDataError):
        last_real_index(torch.zeros(2, 3))
