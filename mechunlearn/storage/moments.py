"""Streaming mean and covariance in float64, mergeable across shards and ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from mechunlearn.errors import EmptyDataError, ShapeError


class RunningMoments:
    """Streaming mean and covariance in float64 (pairwise combination of Chan, Golub and
    LeVeque, "Updating formulae and a pairwise algorithm for computing sample variances", 1979).

    ``update(x [m, d])`` adds rows; ``merge(other)`` combines two accumulators (e.g. from
    several ranks); ``cov(ddof=1)`` returns ``[d, d]``.
    """

    def __init__(self, d: int) -> None:
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.m2 = torch.zeros(d, d, dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        """Add rows ``x [m, d]``."""
        x = x.detach().to("cpu", torch.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ShapeError(f"RunningMoments expects [m, {self.mean.shape[0]}], got {tuple(x.shape)}.")
        m = x.shape[0]
        if m == 0:
            return
        mu = x.mean(0)
        c = x - mu
        self._combine(m, mu, c.T @ c)

    def merge(self, other: RunningMoments) -> None:
        """Fold another accumulator into this one."""
        if other.n:
            self._combine(other.n, other.mean, other.m2)

    def _combine(self, m: int, mu: Tensor, m2: Tensor) -> None:
        n = self.n
        tot = n + m
        delta = mu - self.mean
        self.mean = self.mean + delta * (m / tot)
        self.m2 = self.m2 + m2 + torch.outer(delta, delta) * (n * m / tot)
        self.n = tot

    def cov(self, ddof: int = 1) -> Tensor:
        """Covariance ``[d, d]``."""
        if self.n - ddof <= 0:
            raise EmptyDataError(f"Covariance needs more than {ddof} sample(s), have {self.n}.")
        return self.m2 / (self.n - ddof)
