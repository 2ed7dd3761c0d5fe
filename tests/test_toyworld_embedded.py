"""Shipped trained worlds: a cold build copies verified models and re-measures their rates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mechunlearn.toyworld import embedded as E
from mechunlearn.toyworld import world as W
from mechunlearn.toyworld.config import resolve_config


def test_the_shipped_default_world_verifies():
    """The package ships the ``hard`` world's trained models; they verify against its
    checksums, and its data equals what this code generates for the config."""
    folder, why = E.find(resolve_config("hard"))
    assert folder is not None, why
    meta = json.loads((folder / "embedded.json").read_text())
    assert {f"models/{m}/model.safetensors" for m in W.MODELS} <= set(meta["files"])


def _no_training(*a, **k):
    raise AssertionError("trained although a verified embedded copy exists")


@pytest.mark.slow
def test_cold_build_copies_the_models_and_measures_the_same_rates(tiny_world, tmp_path,
                                                                   monkeypatch):
    cfg = tiny_world.config
    root = tmp_path / "embedded"
    E.embed(tiny_world.path, cfg, W._measured_with(), root=root)
    monkeypatch.setattr(E, "ROOT", root)
    monkeypatch.setattr(W, "_train_into", _no_training)
    folder = W.build(cfg, cache_dir=tmp_path / "cache", progress=False)
    for m in W.MODELS:
        a = load_file(str(folder / "models" / m / "model.safetensors"))
        b = load_file(str(tiny_world.path / "models" / m / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # rates are measured here (not copied), and equal the trained build's under these versions
    assert not (root / cfg.hash() / "metrics.json").exists()
    assert json.loads((folder / "metrics.json").read_text()) == tiny_world.metrics
    assert json.loads((folder / "manifest.json").read_text())["models"] == "shipped"
    assert W.check_build(folder, cfg) is None


def test_a_corrupt_or_foreign_embedded_copy_is_not_used(tiny_world, tmp_path, monkeypatch):
    cfg = tiny_world.config
    root = tmp_path / "embedded"
    src = E.embed(tiny_world.path, cfg, W._measured_with(), root=root)
    assert E.find(cfg, root)[0] == src
    assert E.find(cfg.replace(seed=cfg.seed + 1), root)[0] is None  # another config
    weights = src / "models" / "tuned" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    folder, why = E.find(cfg, root)
    assert folder is None and "models/tuned/model.safetensors" in why
    # the build then trains (here: the patched trainer is reached)
    monkeypatch.setattr(E, "ROOT", root)
    monkeypatch.setattr(W, "_train_into", _no_training)
    with pytest.raises(AssertionError, match="trained although"):
        W.build(cfg, cache_dir=tmp_path / "cache", progress=False)


def test_embed_replaces_only_its_own_copy(tiny_world, tmp_path):
    from mechunlearn.errors import OutputExistsError

    cfg = tiny_world.config
    root = tmp_path / "embedded"
    user = root / cfg.hash()
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        E.embed(tiny_world.path, cfg, W._measured_with(), root=root)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    (user / "notes.txt").unlink()
    src = E.embed(tiny_world.path, cfg, W._measured_with(), root=root)
    again = E.embed(tiny_world.path, cfg, W._measured_with(), root=root)  # its own: replaced
    assert again == src and E.find(cfg, root)[0] == src
