"""Baselines with the :class:`Attributor` interface: representation similarity and random.

* :class:`RepSim` ranks training samples by cosine similarity (or dot product, or negative
  Euclidean distance) to the query at the same Site; the top ``k`` are selected with uniform
  weights. ``residual`` is ``nan`` (RepSim does not reconstruct the query). With
  ``whiten=λ`` the features are first centred and whitened by the training covariance
  (ridge ``λ`` × its mean eigenvalue): directions that many training samples share count
  less, as with the inverse Gram / Fisher term of TRAK and influence functions; as λ -> 0
  the cosine becomes invariant to any invertible affine map of the features.
* :class:`RandomAttributor` scores every sample with seeded uniform noise: the chance level.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
from torch import Tensor

from mechunlearn.attribution.base import (
    Attribution,
    Attributor,
    TrainMatrix,
    as_query,
    as_train,
    check_k,
    is_store,
)
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite

Metric = Literal["cosine", "dot", "euclidean"]


class RepSim(Attributor):
    """Representation-similarity attribution (cosine / kNN) at the training features' Site.

    Args:
        train: ``[N, d]`` tensor, Features, or FeatureStore (streamed shard by shard).
        k: number of samples reported as selected (uniform weights ``1/k``).
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"`` (score = -distance).
        center: subtract the training mean first (for cosine this removes the shared offset
            that residual streams carry, which otherwise makes all cosines close to 1).
        whiten: ``None`` (default) or a ridge ``λ > 0``: centre, then map features through
            ``L`` with ``L Lᵀ = (Σ + λ·tr(Σ)/d·I)⁻¹`` (Σ: training covariance, float64) and
            score in that space (dot = Mahalanobis inner product, euclidean = Mahalanobis
            distance). Costs one ``[d, d]`` covariance and inverse (O(N d² + d³)).
        ids: training ids for raw tensors.

    Raises:
        ConfigError: bad ``metric`` / ``whiten``; with ``center`` (or ``whiten``) training
            features that are all identical (zero variance).
        EmptyDataError: (per query) a query whose features, centred if ``center``, are all
            zero under ``"cosine"`` or ``"dot"``.
    """

    method = "repsim"

    def __init__(self, train: Any, k: int = 32, metric: Metric = "cosine",
                 center: bool = False, ids: Any = None, whiten: float | None = None) -> None:
        if metric not in ("cosine", "dot", "euclidean"):
            raise ConfigError(f"RepSim metric must be 'cosine', 'dot' or 'euclidean', got {metric!r}.")
        if whiten is not None and (isinstance(whiten, bool) or not (
                isinstance(whiten, (int, float)) and math.isfinite(whiten) and whiten > 0)):
            raise ConfigError(f"whiten must be None or a ridge > 0 (e.g. 1e-2), got {whiten!r}.")
        center = center or whiten is not None
        self.metric, self.center, self.whiten, self.k = metric, center, whiten, k
        self._store = train if is_store(train) else None
        self._L: Tensor | None = None
        if self._store is not None:
            self.n, self.d = len(self._store), self._store.d
            self.site, self.fingerprint = self._store.site, self._store.fingerprint
            self.ids = tuple(str(i) for i in self._store.ids)
            self._X: Tensor | None = None
            if self.n == 0:
                as_train(torch.empty(0, self.d))  # raises EmptyDataError
            if center:
                mu, cov, _ = self._store.mean_cov()
                if not float(torch.trace(cov.double())) > 0:
                    raise ConfigError(_CONSTANT.format(n=self.n))
                self._mu = mu.float()
                self._L = _whitener(cov, whiten) if whiten is not None else None
            else:
                self._mu = None
        else:
            tm: TrainMatrix = as_train(train, ids)
            self.n, self.d = tm.values.shape
            self.site, self.fingerprint, self.ids = tm.site, tm.fingerprint, tm.ids
            X = tm.values.float()
            self._mu = X.double().mean(0).float() if center else None
            if center:
                scale = float(X.abs().amax())
                X = X - self._mu
                if not float(X.abs().amax()) > 1e-6 * scale:
                    raise ConfigError(_CONSTANT.format(n=self.n))
            if whiten is not None:
                Xd = X.double()
                self._L = _whitener(Xd.T @ Xd / max(self.n - 1, 1), whiten)
                X = (Xd @ self._L).float()
            self._X = X
            self._norm = self._X.norm(dim=1)
        check_k(k, self.n)

    def _map(self, x: Tensor) -> Tensor:
        """Centre (and whiten) raw features ``[m, d]`` or ``[d]``."""
        x = x.float()
        if self._mu is not None:
            x = x - self._mu
        if self._L is not None:
            x = (x.double() @ self._L).float()
        return x

    def _score_chunk(self, x: Tensor, norms: Tensor, q: Tensor) -> Tensor:
        if self.metric == "dot":
            return (x @ q).double()
        if self.metric == "cosine":
            return ((x @ q) / (norms * q.norm()).clamp_min(1e-30)).double()
        return -(x.double() - q.double()).norm(dim=1)

    def scores(self, query: Any) -> Tensor:
        """Score of every training sample for one query. ``[d] -> [N]`` float64.

        Raises :class:`EmptyDataError` for a query whose (centred) features are all zero under
        ``"cosine"`` or ``"dot"``: every score would be 0 and the ranking arbitrary."""
        raw = as_query(query, self.d, self.site, self.fingerprint)
        q = self._map(raw)
        if self.metric != "euclidean" and not float(q.abs().amax()) > 1e-6 * float(
                raw.abs().amax()):
            where = ("equals the training mean (its centred features are zero)"
                     if self._mu is not None and bool(raw.ne(0).any())
                     else "is all zero (norm 0)")
            raise EmptyDataError(f"A query's features {where}: a zero-norm query has no "
                                 f"{self.metric} similarity to any training sample, so the "
                                 "ranking would be arbitrary; check its Site and sample.")
        if self._X is not None:
            return self._score_chunk(self._X, self._norm, q)
        parts = []
        for values, _ in self._store.iter_shards():
            if values.ndim != 2 or values.shape[1] != self.d:
                raise ShapeError(f"Store shard has shape {tuple(values.shape)}, expected [m, {self.d}].")
            check_finite("training features (store shard)", values)
            x = self._map(values)
            parts.append(self._score_chunk(x, x.norm(dim=1), q))
        return torch.cat(parts)

    def attribute(self, query: Any) -> Attribution:
        """Top-``k`` most similar training samples; scores = similarity to the query."""
        t0 = time.perf_counter()
        s = self.scores(query)
        return ranked_attribution(s, self.k, self.ids, self.method, self.site, t0,
                                  {"metric": self.metric, "center": self.center,
                                   "whiten": self.whiten})


_CONSTANT = ("The {n} training features are all identical (zero variance): after subtracting "
             "their mean every centred feature is zero, so cosine similarity is undefined. "
             "Check the Site (does it vary across samples?) or use the uncentred 'repsim'.")


def _whitener(cov: Tensor, ridge: float) -> Tensor:
    """``L [d, d]`` (float64) with ``L Lᵀ = (cov + ridge·mean eigenvalue·I)⁻¹``."""
    c = cov.double()
    d = c.shape[0]
    scale = float(torch.trace(c)) / d
    if not scale > 0:
        raise ConfigError("whiten: the training features have zero variance; nothing to whiten.")
    inv = torch.linalg.inv(c + ridge * scale * torch.eye(d, dtype=torch.float64))
    return torch.linalg.cholesky((inv + inv.T) / 2)


class RandomAttributor(Attributor):
    """Chance baseline: seeded uniform random scores (new draw for every query)."""

    method = "random"

    def __init__(self, train: Any, k: int = 32, seed: int = 0, ids: Any = None) -> None:
        if is_store(train):
            self.n, self.d = len(train), train.d
            self.site, self.fingerprint = train.site, train.fingerprint
            self.ids = tuple(str(i) for i in train.ids)
        else:
            tm = as_train(train, ids)
            self.n, self.d = tm.values.shape
            self.site, self.fingerprint, self.ids = tm.site, tm.fingerprint, tm.ids
        check_k(k, self.n)
        self.k = k
        self._gen = torch.Generator().manual_seed(seed)

    def attribute(self, query: Any) -> Attribution:
        """Random ranking (the query is only checked, not used)."""
        t0 = time.perf_counter()
        as_query(query, self.d, self.site, self.fingerprint)
        s = torch.rand(self.n, generator=self._gen, dtype=torch.float64)
        return ranked_attribution(s, self.k, self.ids, self.method, self.site, t0, {})


def ranked_attribution(scores: Tensor, k: int, ids: tuple[str, ...], method: str,
                       site: Any, t0: float, info: dict[str, Any]) -> Attribution:
    """An :class:`Attribution` selecting the top-``k`` of ``scores [N]`` with weights ``1/k``."""
    top = torch.topk(scores, k).indices
    return Attribution(
        indices=tuple(int(i) for i in top),
        ids=tuple(ids[int(i)] for i in top),
        weights=torch.full((k,), 1.0 / k, dtype=torch.float64),
        residual=float("nan"),
        scores=scores.double(),
        method=method,
        site=site,
        seconds=time.perf_counter() - t0,
        info=info,
    )
