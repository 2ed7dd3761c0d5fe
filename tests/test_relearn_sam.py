"""``UnlearnConfig.sam_rho``: sharpness-aware unlearning steps (tiny random GPT-2)."""

from __future__ import annotations

import pytest
import torch
from _unlearn_helpers import FORGET, RETAIN, same, state

from mechunlearn.errors import ConfigError
from mechunlearn.unlearn import UnlearnConfig, unlearn
from mechunlearn.unlearn.loop import _sam

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(rho: float) -> UnlearnConfig:
    return UnlearnConfig(steps=3, repair_steps=0, lr=1e-2, eval_every=3, guard=None,
                         sam_rho=rho)


def test_sam_changes_the_steps_and_undo_is_exact(tiny_bridge):
    before = state(tiny_bridge)
    plain = unlearn(tiny_bridge, FORGET, RETAIN, "flip", _cfg(0.0), progress=False)
    w_plain = {k: v.clone() for k, v in tiny_bridge.state_dict().items()}
    plain.undo()
    assert same(tiny_bridge, before)
    sam = unlearn(tiny_bridge, FORGET, RETAIN, "flip", _cfg(0.5), progress=False)
    w_sam = tiny_bridge.state_dict()
    moved = [k for k in w_plain if not torch.equal(w_plain[k], w_sam[k])]
    assert moved, "sam_rho > 0 gave the same weights as plain steps"
    assert sam.history.forget_loss.notna().all()
    sam.undo()
    assert same(tiny_bridge, before)


def test_sam_moves_only_the_forget_term():
    # forget (p - 1)^2, retain 2p^2, at p = 0: step gradient -2 + 0. The forget gradient -2
    # moves p to -rho; there the forget gradient is -2(1 + rho), the retain one is kept at p:
    # -2.5 for rho 0.25 (SAM on the whole loss would give -2(1 + rho) - 4 rho = -3.5).
    p = torch.nn.Parameter(torch.zeros(1))
    (((p - 1) ** 2) + 2 * p ** 2).sum().backward()
    _sam([p], 0.25, lambda: ((p - 1) ** 2).sum())
    assert torch.allclose(p.grad, torch.tensor([-2.5]))
    assert torch.equal(p.detach(), torch.zeros(1))  # weights restored


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1"])
def test_sam_rho_validated(bad):
    with pytest.raises(ConfigError, match="sam_rho"):
        UnlearnConfig(sam_rho=bad)
