"""Directions and interventions remember the model they were fitted on (issue 15, section 2)."""

from __future__ import annotations

import warnings

import pytest
import torch

from mechunlearn.directions import Directions
from mechunlearn.directions.mean_diff import mean_diff
from mechunlearn.errors import ModelMismatchError, ModelMismatchWarning
from mechunlearn.features import extract
from mechunlearn.hooks import apply
from mechunlearn.interventions import Project, Steer, from_dict, to_dict
from mechunlearn.models import tiny_gpt2
from mechunlearn.provenance import current_fingerprint, model_fingerprint, strict
from mechunlearn.sites import resid
from mechunlearn.weights import orthogonalize_

pytestmark = pytest.mark.usefixtures("one_thread")

POS = ["the quick fox", "the quick dog", "quick brown fox", "the brown fox jumps"]
NEG = ["lazy dog over", "the lazy dog", "over the lazy", "dog lazy the over"]
SITE = resid(0, "post", "mean")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Same architecture and d as ``tiny_bridge``, other weights."""
    return tiny_gpt2(n_layer=2, d_model=32, seed=1, folder=tmp_path_factory.mktemp("other"))


@pytest.fixture(scope="module")
def dirs(tiny_bridge):
    return mean_diff(extract(tiny_bridge, POS, SITE), extract(tiny_bridge, NEG, SITE),
                     n_permutations=0, n_splits=2)


def _run(model):
    model(torch.tensor([[5, 6, 7]]), return_type=None)


def test_directions_carry_fingerprint(tiny_bridge, dirs, tmp_path):
    assert dirs.fingerprint == model_fingerprint(tiny_bridge)
    dirs.save(tmp_path / "d")
    assert Directions.load(tmp_path / "d").fingerprint == dirs.fingerprint
    assert dirs.top(1).fingerprint == dirs.fingerprint
    iv = Project(dirs)
    assert iv.fingerprint == dirs.fingerprint
    assert from_dict(to_dict(iv)).fingerprint == dirs.fingerprint


def test_same_model_is_silent(tiny_bridge, dirs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        with apply(tiny_bridge, Project(dirs)):
            _run(tiny_bridge)


def test_other_model_warns_then_strict_raises(other, dirs):
    with pytest.warns(ModelMismatchWarning, match="fitted on a model"):
        with apply(other, Steer(dirs, alpha=2.0)):
            _run(other)
    n_hooks = sum(len(hp.fwd_hooks) for hp in other.hook_dict.values())
    with strict(), pytest.raises(ModelMismatchError, match=dirs.fingerprint):
        with apply(other, Project(dirs)):
            _run(other)
    assert sum(len(hp.fwd_hooks) for hp in other.hook_dict.values()) == n_hooks


def test_env_var_strict(other, dirs, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_STRICT", "1")
    with pytest.raises(ModelMismatchError):
        with apply(other, Project(dirs)):
            _run(other)
    with strict(False), pytest.warns(ModelMismatchWarning):
        with apply(other, Project(dirs)):
            _run(other)


def test_orthogonalize_other_model(other, dirs):
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with strict(), pytest.raises(ModelMismatchError):
        orthogonalize_(other, dirs)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.warns(ModelMismatchWarning):
        orthogonalize_(other, dirs).undo()
    # a plain tensor carries no provenance: no check
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        orthogonalize_(other, dirs.basis).undo()


def test_fingerprint_cache_follows_weight_edits(tiny_bridge, dirs):
    fp = current_fingerprint(tiny_bridge)
    h = orthogonalize_(tiny_bridge, dirs)
    try:
        assert current_fingerprint(tiny_bridge) != fp
        assert current_fingerprint(tiny_bridge) == model_fingerprint(tiny_bridge)
    finally:
        h.undo()
    assert current_fingerprint(tiny_bridge) == fp


def test_mixed_models_give_no_fingerprint(tiny_bridge, other):
    d = mean_diff(extract(tiny_bridge, POS, SITE), extract(other, NEG, SITE), n_permutations=0,
                  n_splits=2)
    assert d.fingerprint is None
