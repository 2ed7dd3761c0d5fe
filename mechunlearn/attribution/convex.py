"""Convex-decomposition attribution (seed 000).

Find a small set of training samples close to the query in feature space such that the query
is (approximately) a convex combination of them:

    min_{S, w}  ||phi(q) - sum_{i in S} w_i phi(x_i)||   s.t.  w >= 0, sum w = 1, |S| <= k.

Algorithm: (1) a candidate pool of the ``pool`` nearest training samples (one mat-vec over the
training matrix, or a chunked top-k over FeatureStore shards); (2) greedy active-set selection
inside the pool (:func:`mechunlearn.attribution.simplex.simplex_lsq`): add the candidate that
most reduces the residual, re-solve the simplex-constrained least squares exactly in float64,
drop samples whose weight hits zero; stop at relative residual ``tol`` or budget ``k``;
(3) pricing: if the pool is exhausted first, one mat-vec over the whole training set finds the
samples that would still lower the residual (negative multiplier), adds them to the pool and
resumes (at most ``refresh`` times). Nearest neighbours alone miss the vertices of a query
that lies *between* clusters; pricing finds them.

Reading the result: ``residual = ||phi(q) - sum w_i phi(x_i)|| / ||phi(q)||`` (after the
configured centering/normalisation, so with ``center=True`` it is relative to the query's
distance from the training mean). 0 means the query is inside the hull of the selected samples;
0.1 means the selected samples explain the query up to a 10 % remainder; near 1 the query is
far outside the hull and the weights only say which samples are *closest* in the convex sense.
In high dimension the residual is rarely 0; compare it across queries/Sites rather than to 0.
Centering changes only the pool (for ``pool_metric="cosine"``) and the residual's denominator:
the convex fit itself is translation-invariant because the weights sum to 1.

Scores over the whole training set (for rankings/AUC): selected samples get ``1 + w_i`` (so
they rank first, by weight); every other sample gets a secondary score in ``[-1, 0]`` from the
pool metric (``-dist / max_dist`` for ``"euclidean"``, ``(cos - 1) / 2`` for ``"cosine"``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mechunlearn.attribution.base import (
    Attribution,
    Attributor,
    as_query,
    as_train,
    check_k,
    is_store,
)
from mechunlearn.attribution.simplex import simplex_lsq, sparse_exact
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite

Normalize = Literal["none", "l2", "standardize"]
PoolMetric = Literal["euclidean", "cosine"]


@dataclass(frozen=True, kw_only=True)
class ConvexConfig:
    """Options of :class:`ConvexAttributor`.

    Attributes:
        k: maximum number of selected samples (budget).
        pool: size of the nearest-neighbour candidate pool (at least ``k``; capped at N).
        tol: stop when the relative residual is ``<= tol``.
        center: subtract the training mean from all features first.
        normalize: ``"none"``, ``"l2"`` (unit rows, after centering) or ``"standardize"``
            (divide each dimension by its training std, floored at ``std_floor`` times the median
            std so near-constant dimensions are not blown up).
        pool_metric: how the pool is chosen and how unselected samples are scored.
        rule: greedy rule, ``"line"`` (largest residual reduction along the line) or
            ``"correlation"`` (Frank-Wolfe: most correlated with the residual).
        std_floor: see ``normalize="standardize"``.
        refresh: pricing rounds: when the greedy stops inside the pool with budget left and
            residual above ``tol``, one pass over the whole training set adds the
            ``refresh_size`` samples with the most negative multiplier (those that would
            lower the residual) to the pool, then the greedy resumes (column generation).
            If none exists, the solution is optimal over the whole training set.
        locality: ``mu >= 0``: minimise ``||q - sum w_i x_i||^2 + mu sum w_i ||q - x_i||^2``
            instead, preferring tight sets of samples close to the query (the seed's "closest
            samples such that q is a convex combination"); 0 = plain residual.
        min_weight: selected samples whose weight is below ``min_weight`` times the largest
            weight are dropped at the end (weights renormalised; residual recomputed).
    """

    k: int = 32
    pool: int = 256
    tol: float = 1e-4
    center: bool = True
    normalize: Normalize = "none"
    pool_metric: PoolMetric = "euclidean"
    rule: Literal["line", "correlation"] = "line"
    std_floor: float = 1e-3
    refresh: int = 2
    min_weight: float = 1e-6
    locality: float = 0.0
    refresh_size: int = 128

    def __post_init__(self) -> None:
        if not (float(self.locality) >= 0.0):
            raise ConfigError(f"ConvexConfig.locality must be >= 0, got {self.locality!r}.")
        if isinstance(self.refresh, bool) or not isinstance(self.refresh, int) or self.refresh < 0:
            raise ConfigError(f"ConvexConfig.refresh must be an int >= 0, got {self.refresh!r}.")
        for name in ("k", "pool", "refresh_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"ConvexConfig.{name} must be a positive int, got {v!r}.")
        if not (0.0 <= float(self.tol) < 1.0):
            raise ConfigError(f"ConvexConfig.tol must be in [0, 1), got {self.tol!r}.")
        if self.normalize not in ("none", "l2", "standardize"):
            raise ConfigError(
                f"ConvexConfig.normalize must be 'none', 'l2' or 'standardize', "
                f"got {self.normalize!r}."
            )
        if self.pool_metric not in ("euclidean", "cosine"):
            raise ConfigError(
                f"ConvexConfig.pool_metric must be 'euclidean' or 'cosine', "
                f"got {self.pool_metric!r}."
            )
        if self.rule not in ("line", "correlation"):
            raise ConfigError(f"ConvexConfig.rule must be 'line' or 'correlation', got {self.rule!r}.")


class ConvexAttributor(Attributor):
    """Convex decomposition of queries over a fixed training set (index built once).

    Args:
        train: ``[N, d]`` tensor/array, :class:`~mechunlearn.features.Features`, or a
            FeatureStore (streamed shard by shard for every query; never fully loaded).
        config: :class:`ConvexConfig` (keyword overrides via ``**overrides``).
        ids: training ids for a raw tensor (default ``"0".."N-1"``).

    Example:
        >>> att = ConvexAttributor(train_feats, k=16).attribute(query_feats)
        >>> att.indices, att.weights, att.residual
    """

    method = "convex"

    def __init__(self, train: Any, config: ConvexConfig | None = None,
                 ids: Any = None, **overrides: Any) -> None:
        cfg = config or ConvexConfig()
        self.config = replace(cfg, **overrides) if overrides else cfg
        self._store = train if is_store(train) else None
        if self._store is not None:
            self.n = len(self._store)
            if self.n == 0:
                raise EmptyDataError("The FeatureStore is empty (0 rows): nothing to attribute to.")
            self.d, self.site, self.fingerprint = self._store.d, self._store.site, self._store.fingerprint
            self.ids = tuple(str(i) for i in self._store.ids)
            self._X = None
        else:
            tm = as_train(train, ids)
            self.n, self.d = tm.values.shape
            self.site, self.fingerprint, self.ids = tm.site, tm.fingerprint, tm.ids
        check_k(self.config.k, self.n)
        self._fit_stats(None if self._store is not None else tm.values)
        if self._store is None:
            X = self._prep(tm.values.float())
            self._X = X.contiguous()
            self._sqn = (X * X).sum(1)

    # ------------------------------------------------------------------ preprocessing
    def _fit_stats(self, values: Tensor | None) -> None:
        cfg = self.config
        self._mu: Tensor | None = None
        self._scale: Tensor | None = None
        if not cfg.center and cfg.normalize != "standardize":
            return
        if values is not None:
            v = values.double()
            mu, var = v.mean(0), v.var(0, unbiased=False)
        else:
            mu, cov, _ = self._store.mean_cov()
            var = torch.diagonal(cov).double()
        if cfg.center:
            self._mu = mu.float()
        if cfg.normalize == "standardize":
            std = var.clamp_min(0).sqrt()
            floor = cfg.std_floor * float(std.median()) + 1e-30
            self._scale = std.clamp_min(floor).float()

    def _prep(self, x: Tensor) -> Tensor:
        """Apply centering/normalisation to rows ``[m, d]`` (or ``[d]``)."""
        x = x.float()
        if self._mu is not None:
            x = x - self._mu
        if self._scale is not None:
            x = x / self._scale
        if self.config.normalize == "l2":
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return x

    def _chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield preprocessed ``(values [m, d], squared norms [m])`` covering the training set."""
        if self._X is not None:
            yield self._X, self._sqn
            return
        for values, _ids in self._store.iter_shards():
            if values.ndim != 2 or values.shape[1] != self.d:
                raise ShapeError(f"Store shard has shape {tuple(values.shape)}, expected [m, {self.d}].")
            check_finite("training features (store shard)", values)
            x = self._prep(values)
            yield x, (x * x).sum(1)

    # ------------------------------------------------------------------ attribution
    def attribute(self, query: Any) -> Attribution:
        """Convex decomposition of one query ``[d]`` (tensor or one-row Features).

        Returns an :class:`Attribution` with ``info`` keys ``pool`` (final pool size),
        ``rounds`` (pricing passes over the training set), ``iterations``, ``optimal``
        (``"global"``: no training sample can lower the residual; ``"pool"``: none in the
        pool; ``""``: stopped by tol/budget) and ``history`` (relative residual after each
        accepted step of the returned solution; non-increasing). After a pricing round at the
        budget the greedy restarts on the enlarged pool and the better of the two solutions
        is kept.

        Raises:
            EmptyDataError: a query whose features are all zero (nothing to decompose).
        """
        t0 = time.perf_counter()
        cfg = self.config
        raw = as_query(query, self.d, self.site, self.fingerprint)
        if not bool(raw.ne(0).any()):
            raise EmptyDataError("The query's features are all zero (norm 0): a zero-norm "
                                 "query cannot be decomposed; check the Site and the query "
                                 "sample (e.g. a hook whose output is zero there).")
        q = self._prep(raw)
        q64 = q.double()
        qn2 = float((q64**2).sum())
        denom = qn2**0.5 if qn2 > 0 else 1.0
        pool_idx, rows, key, d2_all = self._initial_pool(q)
        Xp = rows.double()
        init = None
        hist: list[float] = []
        best = None
        iters, rounds, optimal = 0, 0, ""
        while True:
            run = simplex_lsq(Xp.numpy(), q64.numpy(), k=cfg.k, tol=cfg.tol, rule=cfg.rule,
                              init=init, locality=cfg.locality)
            iters += run.iterations
            run_hist = [float(np.sqrt(h)) / denom for h in run.history]
            if best is None or run.resid_sq <= best.resid_sq:
                hist = hist + run_hist[1:] if init is not None else run_hist
                best = run
            optimal = "pool" if best.optimal else ""
            if hist[-1] <= cfg.tol or rounds >= cfg.refresh:
                break
            if not run.optimal and len(run.idx) < cfg.k:
                break  # stopped for numerical reasons: more candidates will not help
            w = torch.from_numpy(best.weights)
            r = q64 - w @ Xp[torch.from_numpy(best.idx)]
            wd2 = float(w @ d2_all[pool_idx[torch.from_numpy(best.idx)]])
            new_idx, new_rows = self._price(r, float(r @ (q64 - r)), pool_idx, d2_all, wd2)
            rounds += 1
            if len(new_idx) == 0:
                optimal = "global" if best.optimal else optimal
                break
            Xp = torch.cat([Xp, new_rows.double()])
            pool_idx = torch.cat([pool_idx, new_idx])
            # warm start below the budget; at the budget restart so better vertices can win
            init = (best.idx, best.weights) if len(best.idx) < cfg.k else None
        if hist[-1] > cfg.tol and not cfg.locality and len(pool_idx) > cfg.k:
            polished = sparse_exact(Xp.numpy(), q64.numpy(), cfg.k, (cfg.tol * denom) ** 2)
            if polished is not None and polished.resid_sq < best.resid_sq:
                iters += polished.iterations
                best = polished
                hist = hist + [float(np.sqrt(best.resid_sq)) / denom]
        sol = best
        keep = sol.weights >= cfg.min_weight * sol.weights.max()  # prune numerical dust
        w = torch.from_numpy(sol.weights[keep] / sol.weights[keep].sum())
        sel = sol.idx[keep]
        r = q64 - w @ Xp[torch.from_numpy(sel)]
        residual = float(r.norm()) / denom
        idx = pool_idx[torch.from_numpy(sel)]
        scores = self._scores(key, idx, w)
        return Attribution(
            indices=tuple(int(i) for i in idx),
            ids=tuple(self.ids[int(i)] for i in idx),
            weights=w,
            residual=residual,
            scores=scores,
            method=self.method,
            site=self.site,
            seconds=time.perf_counter() - t0,
            info={"pool": len(pool_idx), "rounds": rounds, "iterations": iters,
                  "optimal": optimal, "history": tuple(hist)},
        )

    def _initial_pool(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Nearest ``pool`` rows: ``(indices [P], rows [P, d], pool-metric key [N],
        squared distances to q [N])``."""
        cfg = self.config
        P = min(max(cfg.pool, cfg.k), self.n)
        key_parts: list[Tensor] = []
        d2_parts: list[Tensor] = []
        best_val = torch.empty(0)
        best_idx = torch.empty(0, dtype=torch.long)
        best_rows = torch.empty(0, self.d)
        offset = 0
        qq = float(q @ q)
        for x, sqn in self._chunks():
            dots = x @ q
            d2 = (sqn - 2 * dots + qq).clamp_min(0)
            d2_parts.append(d2)
            if cfg.pool_metric == "euclidean":
                key = -d2  # higher = closer
            else:
                key = dots / (sqn.sqrt() * qq**0.5).clamp_min(1e-30)
            key_parts.append(key)
            v, i = torch.topk(key, min(P, len(key)))
            best_val, best_idx, best_rows = _merge_topk(best_val, best_idx, best_rows, v,
                                                        i + offset, x[i], P)
            offset += len(key)
        return best_idx, best_rows, torch.cat(key_parts).double(), torch.cat(d2_parts).double()

    def _price(self, r: Tensor, rp: float, pool_idx: Tensor, d2_all: Tensor, wd2: float
               ) -> tuple[Tensor, Tensor]:
        """Up to ``refresh_size`` rows outside the pool with the most negative multiplier
        ``lambda_i = -r.(x_i - p) + mu/2 (d_i^2 - sum_j w_j d_j^2)`` (one pass over the
        training set)."""
        half_mu = 0.5 * self.config.locality
        m = self.config.refresh_size
        r32 = r.float()
        in_pool = torch.zeros(self.n, dtype=torch.bool)
        in_pool[pool_idx] = True
        best_val = torch.empty(0)
        best_idx = torch.empty(0, dtype=torch.long)
        best_rows = torch.empty(0, self.d)
        offset = 0
        scale = max(float(r @ r), 1e-300)
        for x, _ in self._chunks():
            gain = (x @ r32).double() - rp  # = -lambda_i
            if half_mu:
                gain -= half_mu * (d2_all[offset : offset + len(gain)] - wd2)
            gain[in_pool[offset : offset + len(gain)]] = -np.inf
            v, i = torch.topk(gain.float(), min(m, len(gain)))
            ok = v > 1e-9 * scale
            v, i = v[ok], i[ok]
            best_val, best_idx, best_rows = _merge_topk(best_val, best_idx, best_rows, v,
                                                        i + offset, x[i], m)
            offset += len(gain)
        return best_idx, best_rows

    def _scores(self, key: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        if self.config.pool_metric == "euclidean":
            dist = (-key).clamp_min(0).sqrt()
            sec = -dist / (float(dist.max()) + 1e-30)
        else:
            sec = (key.clamp(-1, 1) - 1) / 2
        scores = sec.clone()
        scores[idx] = 1.0 + w
        return scores


def _merge_topk(val: Tensor, idx: Tensor, rows: Tensor, v: Tensor, i: Tensor, x: Tensor,
                m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Running top-``m`` over chunks: append one chunk's candidates, keep the ``m`` best."""
    val, idx, rows = torch.cat([val, v]), torch.cat([idx, i]), torch.cat([rows, x])
    if len(val) > m:
        _, j = torch.topk(val, m)
        val, idx, rows = val[j], idx[j], rows[j]
    return val, idx, rows


def convex_attribution(query: Any, train: Any, **config: Any) -> Attribution:
    """One-shot :class:`ConvexAttributor` (``config``: :class:`ConvexConfig` fields)."""
    return ConvexAttributor(train, ConvexConfig(**config)).attribute(query)
