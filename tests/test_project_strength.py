"""Partial projection: ``Project(strength=α)`` removes the share α of the span component."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.errors import ConfigError, NonFiniteError
from mechunlearn.interventions import Project, apply
from mechunlearn.interventions.codec import from_dict
from mechunlearn.sites import Site

SITE = Site("blocks.0.hook_resid_post")


def _basis() -> torch.Tensor:
    return torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))[0].T


def test_strength_zero_half_one_and_two() -> None:
    x = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(1))
    b = _basis()
    comp = (x @ b.T) @ b
    assert comp.abs().max() > 0.1  # the edit has something to remove
    full = Project(b, SITE).edit(x)
    assert torch.equal(Project(b, SITE, strength=1.0).edit(x), full)
    assert torch.equal(Project(b, SITE, strength=0.0).edit(x), x)
    half = Project(b, SITE, strength=0.5).edit(x)
    torch.testing.assert_close(half, x - 0.5 * comp)
    torch.testing.assert_close(half, (x + full) / 2)
    assert float((half @ b.T).abs().max()) > 0.05  # half the component is still there
    torch.testing.assert_close(Project(b, SITE, strength=2.0).edit(x) @ b.T, -(x @ b.T))


def test_strength_on_a_model_and_round_trip() -> None:
    from mechunlearn.lm import logits
    from mechunlearn.models import tiny_gpt2

    model = tiny_gpt2()
    d = int(model.cfg.d_model)
    b = torch.randn(2, d, generator=torch.Generator().manual_seed(2))
    ids = torch.randint(0, int(model.cfg.d_vocab), (2, 6), generator=torch.Generator().manual_seed(3))
    am = torch.ones_like(ids)
    base = logits(model, ids, am)
    with apply(model, Project(b, SITE, strength=0.0)):
        torch.testing.assert_close(logits(model, ids, am), base)
    with apply(model, Project(b, SITE)):
        full = logits(model, ids, am)
    with apply(model, Project(b, SITE, strength=0.5)):
        half = logits(model, ids, am)
    assert (full - base).abs().max() > 1e-3
    assert (half - base).abs().max() > 1e-4 and (half - full).abs().max() > 1e-4
    p = Project(b, SITE, strength=0.25)
    assert from_dict(p.to_dict()).strength == 0.25


def test_bad_strength_and_mixed_union() -> None:
    b = _basis()
    with pytest.raises(ConfigError, match="strength"):
        Project(b, SITE, strength="half")  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match="strength"):
        Project(b, SITE, strength=float("nan"))
    with pytest.raises(ConfigError, match="one strength"):
        Project.union(Project(b[:1], SITE), Project(b[1:], SITE, strength=0.5))
    assert Project.union(Project(b[:1], SITE, strength=0.5),
                         Project(b[1:], SITE, strength=0.5)).strength == 0.5
