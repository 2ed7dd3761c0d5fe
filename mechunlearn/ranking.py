"""Rank statistics shared by the evaluations: ROC AUC with ties counted 1/2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mechunlearn.errors import EmptyDataError


def avg_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x [n]`` with ties given their average rank (float)."""
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    uniq, inv = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inv, ranks)
    cnts = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inv, torch.ones_like(x))
    return (sums / cnts)[inv]


def auc(scores: Tensor, positive: Tensor) -> float:
    """ROC AUC of ``scores [n]`` for boolean labels ``positive [n]`` (ties count 1/2)."""
    positive = positive.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise EmptyDataError(f"AUC needs both classes; got {n_pos} positives, {n_neg} negatives.")
    ranks = avg_ranks(scores.double())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranking_metrics(scores: Tensor, positive: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """ROC AUC (ties count 1/2) and precision@k of ``scores [N]`` for labels ``positive [N]``."""
    pos = positive.bool()
    out = {"auc": auc(scores, pos)}
    top = torch.argsort(-scores.double(), stable=True)
    for k in ks:
        out[f"p@{k}"] = float(pos[top[:k]].float().mean())
    return out
