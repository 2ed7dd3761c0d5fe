"""Neighbour pooling of per-query attributions and its leave-one-out choice of k.

Planted case: queries belong to groups with different causes (disjoint sets of responsible
training samples); each query's scores are its group's signal plus heavy independent noise.
Pooling with same-group neighbours raises the per-query AUC; pooling everything (the set)
mixes the causes and lowers it again; the leave-one-out criterion picks a k within a group.
"""

from __future__ import annotations

import pytest
import torch

from mechunlearn.attribution.pooling import (
    choose_pooling,
    default_ks,
    loo_gain,
    pool_scores,
    zscore_rows,
)
from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.ranking import auc

pytestmark = pytest.mark.usefixtures("one_thread")


def grouped(n_groups: int, per_group: int, n: int = 600, n_cause: int = 20, noise: float = 3.0,
            seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    causes = torch.randperm(n, generator=g)[: n_groups * n_cause].view(n_groups, n_cause)
    rows, labels = [], []
    for c in causes:
        sig = torch.zeros(n)
        sig[c] = 1.0
        for _ in range(per_group):
            rows.append(sig + noise * torch.randn(n, generator=g) / n_cause ** 0.5)
            labels.append(sig.bool())
    return torch.stack(rows), torch.stack(labels)


def mean_auc(S, labels):
    return sum(auc(s, y) for s, y in zip(S, labels)) / len(S)


def test_pooling_within_a_shared_cause_helps_and_all_is_chosen():
    S, y = grouped(1, 24)
    ch = choose_pooling(S)
    assert ch.k >= 4                                    # one cause: pool widely
    assert mean_auc(ch.scores, y) > mean_auc(S, y) + 0.1
    assert mean_auc(ch.scores, y) > 0.99


def test_mixed_causes_choose_a_k_inside_the_group():
    S, y = grouped(3, 12)
    gains = loo_gain(S, default_ks(36))
    ch = choose_pooling(S)
    assert 4 <= ch.k < 35, gains                         # neighbours, not the whole mixed set
    assert gains[35] < gains[ch.k]
    pooled_all = pool_scores(S, 35)
    assert mean_auc(ch.scores, y) > mean_auc(S, y) + 0.1
    assert mean_auc(ch.scores, y) > mean_auc(pooled_all, y) + 0.02


def test_pool_k0_is_the_zscored_input_and_bad_input():
    S, _ = grouped(1, 5)
    assert torch.allclose(pool_scores(S, 0), zscore_rows(S))
    with pytest.raises(ConfigError):
        pool_scores(S, 5)
    with pytest.raises(ConfigError):
        loo_gain(S, [0])
    with pytest.raises(ShapeError):
        pool_scores(S[0], 1)
