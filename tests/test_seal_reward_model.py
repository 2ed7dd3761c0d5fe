"""SEAL reward model: BT loss, head-only training, fine-tuning, save/load, Site checks."""

from __future__ import annotations

import math

import pytest
import torch

from mechunlearn.errors import ConfigError
from mechunlearn.features import Features
from mechunlearn.seal import (
    BodyMismatchError,
    PreferencePair,
    RewardModel,
    SiteMismatchError,
    alignment_resistance,
    bradley_terry_loss,
    fit_head,
    load_hh_rlhf,
    pair_features,
    random_head,
)
from mechunlearn.seal.head import near_constant_dims
from mechunlearn.sites import Site


def test_bt_loss_hand_computed():
    rc = torch.tensor([0.0, 1.0, -100.0, 100.0])
    rr = torch.tensor([0.0, 0.0, 0.0, 0.0])
    per = bradley_terry_loss(rc, rr, reduction="none")
    want = [math.log(2), math.log(1 + math.exp(-1)), 100.0, 0.0]
    assert torch.allclose(per.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)
    assert torch.isclose(bradley_terry_loss(rc, rr), per.mean())
    with pytest.raises(ConfigError):
        bradley_terry_loss(rc, rr, reduction="max")


def _planted(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(d)
    u[3] = 1.0
    xc = torch.randn(n, d, generator=g) + 1.5 * u
    xr = torch.randn(n, d, generator=g)
    return xc, xr, u


def test_head_only_beats_chance_on_planted_signal():
    xc, xr, _ = _planted(400, 16, 0)
    xc[:, 5] = 7.0 + 1e-30 * torch.randn(400)  # a near-constant dim must not blow up
    xr[:, 5] = 7.0
    head, info = fit_head(xc[:300], xr[:300], l2="auto", seed=0)
    assert not bool(head.keep[5]) and head.w[5] == 0
    acc = float((head(xc[300:]) > head(xr[300:])).double().mean())
    assert acc > 0.7 and info["cv_accuracy"] > 0.7
    before = random_head(torch.cat([xc, xr]), seed=1)
    assert abs(float((before(xc) > before(xr)).double().mean()) - 0.5) < 0.2


def test_near_constant_dims():
    x = torch.randn(50, 4, dtype=torch.float64)
    x[:, 1] = 1e-33 * torch.randn(50, dtype=torch.float64)
    x[:, 2] = 3.0
    assert near_constant_dims(x).tolist() == [False, True, True, False]


def _fox_pairs(n: int) -> list[PreferencePair]:
    words = ["the", "quick", "brown", "lazy", "over", "jumps"]
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        w = [words[int(j)] for j in torch.randint(0, len(words), (3,), generator=g)]
        out.append(PreferencePair(" ".join(w), " ".join(w[:2]) + " fox", " ".join(w[:2]) + " dog",
                                  f"p{i}"))
    return out


def test_fit_on_causal_bridge_and_site_checks(tiny_bridge):
    pairs = _fox_pairs(60)
    rm = RewardModel.fit(tiny_bridge, pairs[:40], max_length=16)
    assert rm.site == Site("blocks.1.hook_resid_post", "last")
    rc, rr = rm.score_pairs(pairs[40:])
    assert alignment_resistance(rc, rr).agreement > 0.9
    f = pair_features(tiny_bridge, pairs[40:], [rm.site, rm.site.with_position("mean")],
                      max_length=16)
    assert torch.allclose(rm.score_features(f["chosen"][rm.site]), rc, atol=1e-5)
    with pytest.raises(SiteMismatchError):
        rm.score_features(f["chosen"][rm.site.with_position("mean")])
    bad = f["chosen"][rm.site]
    with pytest.raises(BodyMismatchError):
        rm.score_features(Features(bad.values, bad.ids, bad.site, "0" * 16))
    with pytest.raises(SiteMismatchError):
        RewardModel.from_features(f["chosen"][rm.site], f["rejected"][rm.site.with_position("mean")])


def test_save_load_round_trip(tiny_bridge, tmp_path):
    pairs = _fox_pairs(30)
    rm = RewardModel.fit(tiny_bridge, pairs, max_length=16, l2=0.1)
    rm.save(tmp_path / "rm")
    again = RewardModel.load(tmp_path / "rm", body=tiny_bridge)
    assert again.config == rm.config
    a, b = rm.score_pairs(pairs[:8]), again.score_pairs(pairs[:8])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    head_only = RewardModel.load(tmp_path / "rm")
    with pytest.raises(ConfigError):
        head_only.score([("a", "b")])
    with pytest.raises(ConfigError):
        RewardModel.load(tmp_path / "nothing")


def test_finetune_last_block_and_reload(tmp_path):
    from mechunlearn.models import tiny_gpt2

    body = tiny_gpt2(n_layer=2, d_model=32, seed=0, folder=tmp_path / "m1")
    pairs = _fox_pairs(24)
    rm = RewardModel.fit(body, pairs, max_length=16, l2=1.0)
    block0 = [t.detach().clone() for t in body.blocks[0].parameters()]
    block1 = [t.detach().clone() for t in body.blocks[1].parameters()]
    losses = rm.finetune_(pairs, n_blocks=1, epochs=2, lr=1e-3, batch_size=8, seed=0)
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert all(torch.equal(a, b) for a, b in zip(block0, body.blocks[0].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(block1, body.blocks[1].parameters()))
    assert all(t.requires_grad for t in body.parameters())  # flags restored
    assert rm.config.mode == "finetune" and rm.config.tuned_blocks == (1,)
    rm.save(tmp_path / "rm")
    fresh = tiny_gpt2(n_layer=2, d_model=32, seed=0, folder=tmp_path / "m2")
    with pytest.raises(ConfigError):
        RewardModel.load(tmp_path / "rm")
    again = RewardModel.load(tmp_path / "rm", body=fresh)
    a, b = rm.score_pairs(pairs[:6]), again.score_pairs(pairs[:6])
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_minilm_small_slice_end_to_end(minilm, hh_rlhf_path, tmp_path):
    pairs, _ = load_hh_rlhf(hh_rlhf_path, limit=24)
    rm = RewardModel.fit(minilm, pairs[:16], max_length=48, l2=10.0, cache_dir=tmp_path)
    assert rm.site == Site("blocks.5.hook_resid_post", "response_mean")
    assert int((~rm.head.keep).sum()) >= 1  # MiniLM's near-dead final-LN dims are dropped
    rc, rr = rm.score_pairs(pairs[16:])
    assert torch.isfinite(rc).all() and rc.shape == (8,)
    again = RewardModel.fit(minilm, pairs[:16], max_length=48, l2=10.0, cache_dir=tmp_path)
    assert torch.equal(again.head.w, rm.head.w)  # second run reads the FeatureStore cache


def test_head_from_feature_stores(tiny_bridge, tmp_path):
    from mechunlearn.store import FeatureStore

    pairs = _fox_pairs(30)
    site = Site("blocks.1.hook_resid_post", "last")
    f = pair_features(tiny_bridge, pairs, site, max_length=16, cache_dir=tmp_path)
    (c,) = [p.parent for p in tmp_path.rglob("manifest.json") if "-chosen-" in p.parent.name]
    (r,) = [p.parent for p in tmp_path.rglob("manifest.json") if "-rejected-" in p.parent.name]
    from_store = RewardModel.from_features(FeatureStore.open(c), FeatureStore.open(r), l2=0.1)
    in_memory = RewardModel.from_features(f["chosen"][site], f["rejected"][site], l2=0.1)
    assert torch.allclose(from_store.head.w, in_memory.head.w)
    assert from_store.site == site
