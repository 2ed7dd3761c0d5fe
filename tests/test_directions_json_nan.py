"""Saved Directions are valid JSON: NaN scores (no permutations) are written as null and read
back as NaN (issue 15 follow-up: directions.json held bare NaN)."""

from __future__ import annotations

import json
import math

import torch

from mechunlearn.directions import Directions, mean_diff


def _strict(text: str):
    def refuse(c):
        raise ValueError(f"not JSON: {c}")

    return json.loads(text, parse_constant=refuse)


def test_nan_scores_round_trip_as_null(tmp_path):
    g = torch.Generator().manual_seed(0)
    d = mean_diff(torch.randn(20, 6, generator=g) + 1, torch.randn(20, 6, generator=g),
                  n_permutations=0)
    assert math.isnan(d.scores["p_value"])
    d.save(tmp_path / "d")
    meta = _strict((tmp_path / "d" / "directions.json").read_text())
    assert meta["scores"]["p_value"] is None
    back = Directions.load(tmp_path / "d")
    assert math.isnan(back.scores["p_value"]) and math.isnan(back.scores["null_auc_q05"])
    assert back.scores["heldout_auc"] == d.scores["heldout_auc"]
    assert torch.equal(back.basis, d.basis)
    _strict(json.dumps(d.to_dict(), allow_nan=False))  # to_dict is strict JSON too
    assert math.isnan(Directions.from_dict(d.to_dict()).scores["p_value"])
