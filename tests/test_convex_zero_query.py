"""Convex attribution refuses a zero-norm query (issue 15 follow-up: it returned residual 1.89)."""

from __future__ import annotations

import pytest
import torch

from mechunlearn.attribution import ConvexAttributor
from mechunlearn.errors import EmptyDataError


def test_zero_query_is_a_typed_error():
    train = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    att = ConvexAttributor(train, k=3)
    with pytest.raises(EmptyDataError, match="zero-norm"):
        att.attribute(torch.zeros(6))
    with pytest.raises(EmptyDataError, match="zero-norm"):
        att.attribute_many(torch.stack([train[0], torch.zeros(6)]))
    ok = att.attribute(train[0])  # a real query still works
    assert ok.residual < 1e-6 and abs(float(ok.weights.sum()) - 1) < 1e-6
