"""The convex solver's speed work keeps its answers: equal to the pre-speed-up solver (golden
file), blocked ``attribute_many`` equal to one-at-a-time ``attribute``, and the blocked fast
path falls back to the reference with a warning when its first-use check fails."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mechunlearn import fastpath
from mechunlearn.attribution import ConvexAttributor
from mechunlearn.errors import FastPathMismatchWarning

GOLDEN = Path(__file__).parent / "data" / "convex_golden.json"


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """3000 x 48 clustered rows and 6 queries (the golden file was written from these)."""
    g = torch.Generator().manual_seed(19)
    centres = torch.randn(12, 48, generator=g) * 3
    X = centres[torch.randint(0, 12, (3000,), generator=g)] + torch.randn(3000, 48, generator=g)
    Q = torch.stack([torch.rand(4, generator=g) @ X[torch.randint(0, 3000, (4,), generator=g)] / 2
                     + 0.1 * torch.randn(48, generator=g) for _ in range(6)])
    return X, Q


@pytest.mark.parametrize("case", range(4))
def test_same_answers_as_the_solver_before_the_speed_up(case):
    # tolerance: same selected set, weights within 1e-6, residual within 1e-7 (float rounding of
    # the Gram-column expansion and of matrix products instead of matrix-vector products)
    X, Q = _data()
    cfg = json.loads(GOLDEN.read_text())["configs"][case]
    att = ConvexAttributor(X, **cfg["config"])
    for a, ref in zip(att.attribute_many(Q), cfg["results"]):
        assert sorted(a.indices) == sorted(ref["indices"])
        w = dict(zip(a.indices, a.weights.tolist()))
        assert max(abs(w[i] - r) for i, r in zip(ref["indices"], ref["weights"])) < 1e-6
        assert abs(a.residual - ref["residual"]) < 1e-7


def test_blocked_equals_one_at_a_time_and_shares_passes(monkeypatch):
    from mechunlearn.attribution import scan

    X, Q = _data()
    att = ConvexAttributor(X, k=16, block=4)
    single = [att.attribute(q) for q in Q]
    calls = []
    orig = scan.pools
    monkeypatch.setattr(scan, "pools", lambda *a, **k: calls.append(len(a[1])) or orig(*a, **k))
    many = att.attribute_many(Q)
    assert [c for c in calls if c > 1] == [4, 2]  # 6 queries in blocks of 4: two pool passes
    for a, b in zip(single, many):
        assert a.indices == b.indices
        assert torch.allclose(a.scores, b.scores, atol=1e-4)


def test_blocked_path_falls_back_when_its_check_fails(monkeypatch):
    X, Q = _data()
    att = ConvexAttributor(X, k=8)
    fastpath.reset("convex_blocked")
    monkeypatch.setattr(ConvexAttributor, "_check_blocked", lambda self, qs: (False, 1.0))
    drives = []
    orig = ConvexAttributor._drive
    monkeypatch.setattr(ConvexAttributor, "_drive",
                        lambda self, qs, t0: drives.append(len(qs)) or orig(self, qs, t0))
    try:
        with pytest.warns(FastPathMismatchWarning, match="Blocked convex attribution"):
            many = att.attribute_many(Q[:3])
        assert drives == [1, 1, 1]  # the reference: one query per pass
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            att.attribute_many(Q[:3])  # warns once per process
    finally:
        fastpath.reset("convex_blocked")
    assert [a.indices for a in many] == [att.attribute(q).indices for q in Q[:3]]


def test_block_must_be_positive():
    from mechunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="block"):
        ConvexAttributor(torch.randn(10, 3), block=0)
