"""Linear datamodeling score: ~1 for the true additive effects, ~0 for random scores."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.studies.lds import lds, lds_table, predicted_effects, random_subsets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lds_is_one_for_true_additive_scores_and_zero_for_random():
    g = torch.Generator().manual_seed(0)
    n, q, m = 300, 8, 60
    true = torch.randn(q, n, generator=g)
    masks = random_subsets(n, m, 0.5, seed=1)
    assert (masks.sum(1) == 150).all()
    actual = predicted_effects(true, masks) + 0.5 * torch.randn(m, q, generator=g, dtype=torch.float64)
    res = {r["method"]: r["lds"] for r in lds_table(
        {"true": true, "random": torch.randn(q, n, generator=g), "negated": -true},
        masks, actual)}
    assert res["true"] > 0.95
    assert abs(res["random"]) < 0.15
    assert res["negated"] < -0.95
    one = lds(predicted_effects(true, masks), actual)
    assert one.per_query.shape == (q,) and one.sd >= 0


def test_lds_bad_input():
    with pytest.raises(ConfigError):
        random_subsets(10, 2)
    with pytest.raises(ConfigError):
        random_subsets(10, 5, frac=1.0)
    with pytest.raises(ShapeError):
        predicted_effects(torch.zeros(2, 5), torch.zeros(4, 6, dtype=torch.bool))
    with pytest.raises(ShapeError):
        lds(torch.zeros(2, 3), torch.zeros(2, 3))
