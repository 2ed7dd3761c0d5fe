"""Unlearning losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.sites import Site
from mechunlearn.unlearn.objectives import (
    NPO,
    RMU,
    Flip,
    GradientAscent,
    SimNPO,
    dpo_loss,
    ga_loss,
    make_objective,
    npo_loss,
    response_logprobs,
    rmu_loss,
    simnpo_loss,
    token_kl,
)

t = torch.tensor


def test_npo_hand_values():
    # equal to reference: (2/beta) ln 2
    assert npo_loss(t([-3.0]), t([-3.0]), 0.5).item() == pytest.approx(4 * math.log(2))
    # logp - ref = -2, beta = 1: 2 * ln(1 + e^-2)
    assert npo_loss(t([-5.0]), t([-3.0]), 1.0).item() == pytest.approx(2 * math.log1p(math.exp(-2)))
    # NPO -> GA as beta -> 0 (up to a constant): gradient wrt logp is sigma(beta*x)*2 -> 1
    x = torch.tensor([-1.0], requires_grad=True)
    npo_loss(x, t([0.0]), 1e-4).sum().backward()
    assert x.grad.item() == pytest.approx(1.0, abs=1e-3)


def test_simnpo_ga_dpo_hand_values():
    assert simnpo_loss(t([-2.0]), beta=1.0, gamma=0.5).item() == pytest.approx(
        2 * math.log1p(math.exp(-1.5)))
    assert ga_loss(t([-0.7, -2.0])).tolist() == pytest.approx([-0.7, -2.0])
    # DPO margin: (lg - rg) - (lb - rb) = (-1 - -2) - (-3 - -3) = 1; beta 2: softplus(-2)
    assert dpo_loss(t([-1.0]), t([-3.0]), t([-2.0]), t([-3.0]), 2.0).item() == pytest.approx(
        math.log1p(math.exp(-2)))


def test_rmu_and_kl_hand_values():
    h = torch.zeros(1, 3, 2)
    h[0, 0] = t([1.0, 1.0])
    h[0, 1] = t([3.0, 1.0])
    mask = t([[True, True, False]])
    # target (1, 1): token0 0, token1 (4 + 0)/2 = 2; mean over 2 tokens = 1
    assert rmu_loss(h, t([1.0, 1.0]), mask).item() == pytest.approx(1.0)
    p = torch.log(t([[[0.5, 0.5], [0.9, 0.1]]]))
    q_logits = torch.log(t([[[0.25, 0.75], [0.9, 0.1]]]))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    got = token_kl(p, q_logits, t([[True, True]])).item()
    assert got == pytest.approx(kl0 / 2, rel=1e-5)
    assert token_kl(p, q_logits, t([[True, False]])).item() == pytest.approx(kl0, rel=1e-5)


def test_response_logprobs_counts_only_masked_next_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(token 2 | pos 0) = 3/6
    ids = t([[0, 2, 1]])
    lp, n = response_logprobs(logits, ids, t([[False, True, False]]))
    assert n.item() == 1 and lp.item() == pytest.approx(math.log(0.5))
    lp2, n2 = response_logprobs(logits, ids, t([[False, True, True]]))
    assert n2.item() == 2 and lp2.item() == pytest.approx(math.log(0.5) + math.log(0.25))
    with pytest.raises(ShapeError):
        response_logprobs(logits, ids[:, :2], t([[True, True]]))


def test_objectives_forward_the_quantities():
    f = {"logp": t([-4.0, -6.0]), "ntok": t([2.0, 3.0]), "ref_logp": t([-4.0, -4.0]),
         "good_logp": t([-2.0, -1.0]), "good_ntok": t([1.0, 1.0]),
         "ref_good_logp": t([-2.0, -2.0])}
    assert GradientAscent().forget(f).tolist() == pytest.approx([-2.0, -2.0])
    assert NPO(beta=1.0).forget(f)[0].item() == pytest.approx(2 * math.log(2))
    assert SimNPO(beta=1.0).forget(f)[1].item() == pytest.approx(2 * math.log1p(math.exp(-2)))
    fl = Flip(beta=1.0, nll=0.5).forget(f)
    # sample 1: margin (-1 - -2) - (-6 - -4) = 3 -> softplus(-3); NLL term -0.5 * -1
    assert fl[1].item() == pytest.approx(math.log1p(math.exp(-3)) + 0.5)


def test_rmu_target_and_direction():
    r = RMU(site=Site("blocks.0.hook_resid_post", "all"), coef=2.0, direction=t([3.0, 4.0]))
    assert r.target(2).tolist() == pytest.approx([1.2, 1.6])
    rnd = RMU(coef=5.0, seed=3).target(8)
    assert rnd.norm().item() == pytest.approx(5.0)
    assert torch.equal(rnd, RMU(coef=5.0, seed=3).target(8))
    with pytest.raises(ShapeError, match="d=2"):
        r.target(3)


def test_make_objective_and_bad_config():
    assert isinstance(make_objective("npo", beta=0.2), NPO)
    with pytest.raises(ConfigError, match="Unknown objective"):
        make_objective("dpo")
    with pytest.raises(ConfigError, match="beta"):
        NPO(beta=0.0)
