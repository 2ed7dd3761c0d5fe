"""The diagnose chain's attribution sweep takes its methods from attribution.METHODS, with the
preference-contrast methods when a reference model and rejected responses are given."""

from __future__ import annotations

import pytest

from mechunlearn.studies.attribute import attribute_sweep
from mechunlearn.studies.cases import BadCases
from mechunlearn.studies.data import TrainPair
from mechunlearn.studies.format import raw

pytestmark = pytest.mark.usefixtures("one_thread")

W = "apple river stone cloud green fast quiet bright music paper".split()
TRAIN = [TrainPair(f"t{i}", f"Q: {W[i]} {W[(i * 3) % 10]}?", f" A: {W[(i + 4) % 10]} ok.",
                   f" A: {W[(i + 1) % 10]} no.") for i in range(10)]
CASES = BadCases([TRAIN[2].prompt, TRAIN[6].prompt], [TRAIN[2].chosen, TRAIN[6].chosen], [],
                 2, 2, "given")


def test_sweep_methods_from_the_registry(tiny_bridge):
    res = attribute_sweep(tiny_bridge, raw(), TRAIN, CASES, layers=[1], k=2, gradients=True,
                          truth=["t2", "t6"], batch_size=8, reference=tiny_bridge)
    got = set(res.sweep["method"])
    assert got == {"convex", "repsim", "repsim_centered", "repsim_whitened", "convex_grad",
                   "gradsim", "gradsim_centered", "contrast", "contrast+dpo"}
    assert res.sweep["auc"].between(0, 1).all()
    # the bad cases are copies of t2/t6's chosen answers: plain similarity finds them
    rep = res.sweep[res.sweep.method == "repsim"].iloc[0]
    assert rep["auc"] == 1.0 and rep["precision_at_k"] == 1.0
    assert set(res.scores) == got
    plain = attribute_sweep(tiny_bridge, raw(), TRAIN, CASES, layers=[1], k=2, gradients=False)
    assert "contrast" not in set(plain.sweep["method"])  # no reference model given
