"""Shared pieces of every attribution method: the :class:`Attribution` result and input checks.

Every method answers the same question -- *which training samples explain this query?* -- and
returns a frozen :class:`Attribution`: a small selected set (indices, ids, weights on the
simplex), a relative residual (``nan`` for methods that do not reconstruct the query), and a
score for every training sample so the whole training set can be ranked.

Inputs may be plain tensors ``[N, d]``, :class:`mechunlearn.features.Features`, or a
:class:`mechunlearn.storage.FeatureStore` (anything with ``iter_shards()``). When both the query
and the training set carry a Site and a model fingerprint, they must agree
(:class:`FeatureMismatchError` otherwise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechunlearn.errors import (
    ConfigError,
    EmptyDataError,
    FeatureMismatchError,  # noqa: F401 (defined in errors.py, kept importable here)
    ShapeError,
    check_finite,
)
from mechunlearn.features import Features
from mechunlearn.sites import Site


@dataclass(frozen=True)
class Attribution:
    """Result of attributing one query to the training set.

    Attributes:
        indices: positions (rows of the training set) of the selected samples, best first.
        ids: their sample ids.
        weights: ``[len(indices)]`` float64, each >= 0, summing to 1.
        residual: ``||phi(q) - sum_i w_i phi(x_i)|| / ||phi(q)||`` in the method's (pre-processed)
            feature space; ``nan`` for methods that do not reconstruct the query (RepSim,
            gradient similarity, random). 0 means the query lies in the convex hull of the
            selected samples; values near 1 mean the selected samples explain little of it.
        scores: ``[N]`` float64 score of every training sample; higher = more responsible.
            Sorting by it gives the method's ranking of the whole training set.
        method: method name (``"convex"``, ``"repsim"``, ``"gradsim"``, ``"random"``).
        site: the Site the features were read at (``None`` for raw tensors).
        seconds: wall-clock time of the query (excluding one-off index building).
        info: small method-specific diagnostics (pool size, iterations, ...).
    """

    indices: tuple[int, ...]
    ids: tuple[str, ...]
    weights: Tensor
    residual: float
    scores: Tensor
    method: str
    site: Site | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.ids) or len(self.indices) != len(self.weights):
            raise ShapeError(
                f"Attribution: {len(self.indices)} indices, {len(self.ids)} ids, "
                f"{len(self.weights)} weights; they must have the same length."
            )

    def ranking(self, k: int | None = None) -> Tensor:
        """Training-set rows sorted by score, best first (ties broken by row). ``[k or N]``."""
        order = np.lexsort((np.arange(len(self.scores)), -self.scores.numpy()))
        out = torch.as_tensor(order, dtype=torch.long)
        return out if k is None else out[:k]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse: :meth:`from_dict`)."""
        return {
            "indices": list(self.indices),
            "ids": list(self.ids),
            "weights": self.weights.tolist(),
            "residual": None if math.isnan(self.residual) else self.residual,
            "scores": self.scores.tolist(),
            "method": self.method,
            "site": None if self.site is None else self.site.to_dict(),
            "seconds": self.seconds,
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attribution:
        """Rebuild an :class:`Attribution` written by :meth:`to_dict`."""
        try:
            return cls(
                indices=tuple(int(i) for i in d["indices"]),
                ids=tuple(str(i) for i in d["ids"]),
                weights=torch.tensor(d["weights"], dtype=torch.float64),
                residual=float("nan") if d["residual"] is None else float(d["residual"]),
                scores=torch.tensor(d["scores"], dtype=torch.float64),
                method=str(d["method"]),
                site=None if d.get("site") is None else Site.from_dict(d["site"]),
                seconds=float(d.get("seconds", 0.0)),
                info=dict(d.get("info", {})),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"Not an Attribution dict ({e}).") from e


# ----------------------------------------------------------------------------- input handling
@dataclass(frozen=True)
class TrainMatrix:
    """In-memory training features ``values [N, d]`` with ids, Site and fingerprint."""

    values: Tensor
    ids: tuple[str, ...]
    site: Site | None
    fingerprint: str | None


def is_store(x: Any) -> bool:
    """Whether ``x`` looks like a FeatureStore (has ``iter_shards`` and ``fingerprint``)."""
    return hasattr(x, "iter_shards") and hasattr(x, "fingerprint") and not isinstance(x, Tensor)


def as_train(train: Any, ids: Sequence[str] | None = None) -> TrainMatrix:
    """Training features as a checked ``[N, d]`` float tensor (``Features``/tensor/array/store).

    Raises :class:`EmptyDataError` (N = 0), :class:`ShapeError` (not 2-D),
    :class:`NonFiniteError` (NaN/inf).
    """
    site: Site | None = None
    fp: str | None = None
    if isinstance(train, Features):
        values, ids, site, fp = train.values, train.ids, train.site, train.fingerprint
    elif is_store(train):
        f = train.load()
        values, ids, site, fp = f.values, f.ids, f.site, f.fingerprint
    elif isinstance(train, (Tensor, np.ndarray)):
        values = torch.as_tensor(train)
    else:
        raise ConfigError(
            f"Training features must be a Tensor [N, d], Features or FeatureStore, "
            f"got {type(train).__name__}."
        )
    if values.ndim != 2:
        raise ShapeError(f"Training features must be [N, d], got shape {tuple(values.shape)}.")
    if values.shape[0] == 0:
        raise EmptyDataError("The training set is empty (0 rows): nothing to attribute to.")
    if not values.is_floating_point():
        values = values.float()
    check_finite("training features", values)
    n = values.shape[0]
    id_t = tuple(str(i) for i in range(n)) if ids is None else tuple(str(i) for i in ids)
    if len(id_t) != n:
        raise ShapeError(f"Got {len(id_t)} training ids for {n} training rows.")
    return TrainMatrix(values.detach(), id_t, site, fp)


def as_query(
    query: Any, d: int, site: Site | None, fingerprint: str | None
) -> Tensor:
    """The query as a finite ``[d]`` tensor, checked against the training Site/model.

    Accepts a Tensor/array ``[d]`` or ``[1, d]``, or a one-row :class:`Features`.
    """
    if isinstance(query, Features):
        check_same_space(query.site, query.fingerprint, site, fingerprint)
        values = query.values
    elif isinstance(query, (Tensor, np.ndarray)):
        values = torch.as_tensor(query)
    else:
        raise ConfigError(
            f"The query must be a Tensor [d] or one-row Features, got {type(query).__name__}."
        )
    if values.ndim == 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 1:
        raise ShapeError(
            f"The query must be one feature vector [d] (or [1, d]), got shape "
            f"{tuple(values.shape)}; use attribute_many() for several queries."
        )
    if values.shape[0] != d:
        raise ShapeError(f"Query has d={values.shape[0]} but training features have d={d}.")
    if not values.is_floating_point():
        values = values.float()
    check_finite("query features", values)
    return values.detach()


def check_same_space(
    q_site: Site | None, q_fp: str | None, t_site: Site | None, t_fp: str | None
) -> None:
    """Raise :class:`FeatureMismatchError` if both sides name different Sites or models."""
    if q_site is not None and t_site is not None and q_site != t_site:
        raise FeatureMismatchError(
            f"Query features are at Site {q_site.key} but training features are at "
            f"{t_site.key}; extract both at the same Site."
        )
    if q_fp is not None and t_fp is not None and q_fp != t_fp:
        raise FeatureMismatchError(
            f"Query features come from model {q_fp} but training features from model {t_fp}; "
            "extract both with the same model."
        )


def check_k(k: int, n: int, name: str = "k") -> None:
    """Raise :class:`ConfigError` unless ``1 <= k <= n``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name} must be a positive int, got {k!r}.")
    if k > n:
        raise ConfigError(f"{name}={k} is larger than the training set (N={n}).")


def query_rows(queries: Any) -> list[Any]:
    """Split ``[m, d]`` queries (Tensor or Features) into a list of single queries."""
    if isinstance(queries, Features):
        return [queries.subset([i]) for i in range(len(queries))]
    t = torch.as_tensor(queries)
    if t.ndim != 2:
        raise ShapeError(f"Queries must be [m, d], got shape {tuple(t.shape)}.")
    return list(t)


class Attributor:
    """Base class: ``attribute(query) -> Attribution`` over a fixed training set."""

    method: str = "base"

    def attribute(self, query: Any) -> Attribution:  # pragma: no cover - abstract
        """Attribute one query ``[d]`` (or one-row Features)."""
        raise NotImplementedError

    def attribute_many(self, queries: Any) -> list[Attribution]:
        """Attribute each row of ``queries [m, d]`` (Tensor or Features)."""
        return [self.attribute(q) for q in query_rows(queries)]

    def attribute_set(self, queries: Any, k: int | None = None) -> SetAttribution:
        """Attribute a *set* of bad responses as one problem: the mean of per-query scores.

        Training samples behind many of the bad responses rise to the top; samples that only
        look like one of them average out. ``queries``: ``[m, d]`` in the form
        :meth:`attribute_many` takes. ``k``: size of the combined selection (default: the
        attributor's ``k``). Returns a :class:`SetAttribution` (combined result with
        ``method=<method>_set``, ``scores [N]`` = mean of the ``m`` per-query scores, uniform
        weights, ``residual`` = mean per-query residual; plus every per-query result).
        """
        t0 = time.perf_counter()
        per = self.attribute_many(queries)
        k = int(getattr(self, "k", len(per[0].indices) if per else 1)) if k is None else k
        return combine_set(per, k, getattr(self, "ids", None), t0)


def combine_set(per: Sequence[Attribution], k: int, ids: Sequence[str] | None = None,
                t0: float | None = None) -> SetAttribution:
    """A :class:`SetAttribution` from per-query results: mean of their ``scores [N]``, top ``k``.

    ``ids``: training ids (default ``"0".."N-1"``); ``t0``: ``perf_counter`` start for
    ``seconds``. Raises :class:`EmptyDataError` for no results, :class:`ConfigError` for a bad
    ``k``, :class:`ShapeError` when the score lengths differ.
    """
    t0 = time.perf_counter() if t0 is None else t0
    if not per:
        raise EmptyDataError("attribute_set() got no queries.")
    if len({len(a.scores) for a in per}) != 1:
        raise ShapeError("Per-query results score training sets of different sizes.")
    scores = torch.stack([a.scores.double() for a in per]).mean(0)
    check_k(k, len(scores))
    ids = tuple(ids) if ids else tuple(str(i) for i in range(len(scores)))
    top = torch.topk(scores, k).indices
    res = [a.residual for a in per]
    combined = Attribution(
        indices=tuple(int(i) for i in top), ids=tuple(ids[int(i)] for i in top),
        weights=torch.full((k,), 1.0 / k, dtype=torch.float64),
        residual=float(np.mean(res)) if not all(math.isnan(r) for r in res) else float("nan"),
        scores=scores, method=f"{per[0].method}_set", site=per[0].site,
        seconds=time.perf_counter() - t0, info={"n_queries": len(per)})
    return SetAttribution(combined, tuple(per))


@dataclass(frozen=True)
class SetAttribution:
    """Result of :meth:`Attributor.attribute_set`: one ranking for a set of bad responses.

    Attributes:
        combined: :class:`Attribution` whose ``scores [N]`` are the mean per-query scores.
        per_query: the ``m`` per-query :class:`Attribution` results, in query order.
    """

    combined: Attribution
    per_query: tuple[Attribution, ...]
