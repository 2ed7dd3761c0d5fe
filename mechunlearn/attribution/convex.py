"""Convex-decomposition attribution (Liu et al., arXiv:2512.13837).

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
that lies *between* clusters; pricing finds them. (4) polish: when the budget stopped the
greedy above ``tol``, a larger-budget re-solve with backward elimination looks for a sparse
exact decomposition, skipped when the pool optimum is certified (KKT) to be above ``tol``.
Passes over the training set are the only O(N) work: :meth:`ConvexAttributor.attribute_many`
serves a block of queries per pass with one matrix product (:mod:`.scan`), self-checked
against one-at-a-time solves at first use.

Source: Liu et al., "Explainable reinforcement learning from human feedback to improve
alignment" (arXiv:2512.13837); pricing is Dantzig-Wolfe column generation.

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
from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechunlearn import fastpath
from mechunlearn.attribution import scan
from mechunlearn.attribution.base import (
    Attribution,
    Attributor,
    as_query,
    as_train,
    check_k,
    is_store,
    query_rows,
)
from mechunlearn.attribution.convex_config import ConvexConfig
from mechunlearn.attribution.simplex import simplex_lsq, sparse_exact
from mechunlearn.errors import EmptyDataError, ShapeError, check_finite


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
        is kept. An all-zero query raises :class:`EmptyDataError` (nothing to decompose).
        """
        return self._drive([self._query(query)], time.perf_counter())[0]

    def _query(self, query: Any) -> Tensor:
        """A checked, preprocessed query; an all-zero one raises :class:`EmptyDataError`."""
        q = as_query(query, self.d, self.site, self.fingerprint)
        if not bool(q.ne(0).any()):
            raise EmptyDataError("A query's features are all zero (norm 0): a zero-norm query "
                                 "cannot be decomposed; check its Site and sample.")
        return self._prep(q)

    def attribute_many(self, queries: Any) -> list[Attribution]:
        """Attribute each row of ``queries [m, d]`` (Tensor or Features), in blocks.

        Same results as calling :meth:`attribute` on each row (within float32 rounding of
        the passes: scores agree to ``1e-4``), but each pass over the training set (pool
        screening, pricing) serves a whole block of ``block`` queries with one matrix
        product, so at N = 100k, d = 384 a query costs a fraction of one matrix-vector pass
        (``scripts/bench_attribution.py``). The blocked path checks itself against
        one-at-a-time solves at first use (:mod:`mechunlearn.fastpath`) and falls back with a
        :class:`~mechunlearn.errors.FastPathMismatchWarning` on mismatch. ``seconds`` of each
        result is the block's time divided by its size.
        """
        rows = query_rows(queries)
        qs = [self._query(q) for q in rows]
        if len(qs) < 2 or not fastpath.self_check(
                "convex_blocked", lambda: self._check_blocked(qs[:2]),
                "Blocked convex attribution (one matrix product per pass for many queries)"):
            return [self._drive([q], time.perf_counter())[0] for q in qs]
        out: list[Attribution] = []
        for s in range(0, len(qs), self.config.block):
            out += self._drive(qs[s:s + self.config.block], time.perf_counter())
        return out

    def _check_blocked(self, qs: list[Tensor]) -> tuple[bool, float]:
        ref = [self._drive([q], 0.0)[0] for q in qs]
        fast = self._drive(qs, 0.0)
        oks = [fastpath.close(f.scores, r.scores, rtol=0.0, atol=1e-4) for f, r in zip(fast, ref)]
        return all(ok for ok, _ in oks), max(diff for _, diff in oks)

    def _drive(self, qs: list[Tensor], t0: float) -> list[Attribution]:
        """Run one solver per (preprocessed) query in lockstep, batching their passes."""
        gens = [self._solve(q) for q in qs]
        for g in gens:
            next(g)
        done: dict[int, Attribution] = {}
        reqs: dict[int, Any] = {}
        for i, p in enumerate(scan.pools(self._chunks(), torch.stack(qs), self._pool_size(),
                                         self.config.pool_metric)):
            scan.step(gens[i], i, p, reqs, done)
        half_mu = 0.5 * self.config.locality
        while reqs:
            order = list(reqs)
            r = [reqs[i] for i in order]
            res = scan.price(self._chunks(), self.n, torch.stack([x[0] for x in r]),
                             [x[1] for x in r], [x[2] for x in r], self.config.refresh_size,
                             half_mu, [x[3] for x in r], [x[4] for x in r])
            reqs = {}
            for i, reply in zip(order, res):
                scan.step(gens[i], i, reply, reqs, done)
        dt = (time.perf_counter() - t0) / len(qs)
        return [replace(done[i], seconds=dt) for i in range(len(qs))]

    def _pool_size(self) -> int:
        return min(max(self.config.pool, self.config.k), self.n)

    def _solve(self, q: Tensor) -> Generator[Any, Any, Attribution]:
        """One query's solver: receives its :class:`scan.Pool`, yields pricing requests
        ``(r [d] float32, r.p, pool indices, d2 [N], sum_j w_j d2_j)`` and receives
        ``(new indices, new rows)``; returns the :class:`Attribution`."""
        cfg = self.config
        q64 = q.double()
        qn2 = float((q64**2).sum())
        denom = qn2**0.5 if qn2 > 0 else 1.0
        p0: scan.Pool = yield None
        pool_idx, d2_all = p0.idx, p0.d2
        Xp = p0.rows.double()
        init = None
        hist: list[float] = []
        best, best_n = None, 0
        iters, rounds, optimal = 0, 0, ""
        while True:
            run = simplex_lsq(Xp.numpy(), q64.numpy(), k=cfg.k, tol=cfg.tol, rule=cfg.rule,
                              init=init, locality=cfg.locality)
            iters += run.iterations
            run_hist = [float(np.sqrt(h)) / denom for h in run.history]
            if best is None or run.resid_sq <= best.resid_sq:
                hist = hist + run_hist[1:] if init is not None else run_hist
                best, best_n = run, len(Xp)
            optimal = "pool" if best.optimal else ""
            if hist[-1] <= cfg.tol or rounds >= cfg.refresh:
                break
            if not run.optimal and len(run.idx) < cfg.k:
                break  # stopped for numerical reasons: more candidates will not help
            w = torch.from_numpy(best.weights)
            r = q64 - w @ Xp[torch.from_numpy(best.idx)]
            wd2 = float(w @ d2_all[pool_idx[torch.from_numpy(best.idx)]].double())
            new_idx, new_rows = yield (r.float(), float(r @ (q64 - r)), pool_idx, d2_all, wd2)
            rounds += 1
            if len(new_idx) == 0:
                optimal = "global" if best.optimal else optimal
                break
            Xp = torch.cat([Xp, new_rows.double()])
            pool_idx = torch.cat([pool_idx, new_idx])
            # warm start below the budget; at the budget restart so better vertices can win
            init = (best.idx, best.weights) if len(best.idx) < cfg.k else None
        # polish: a sparser exact decomposition can exist only if the pool optimum reaches
        # tol; when ``best`` is KKT-optimal on the whole current pool it does not (convex
        # problem), so the extra greedy run is skipped
        pool_optimum_above_tol = (best.optimal and best_n == len(Xp)
                                  and best.resid_sq > (cfg.tol * denom) ** 2 * (1 + 1e-6))
        if (hist[-1] > cfg.tol and not cfg.locality and len(pool_idx) > cfg.k
                and not pool_optimum_above_tol):
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
        return Attribution(
            indices=tuple(int(i) for i in idx),
            ids=tuple(self.ids[int(i)] for i in idx),
            weights=w,
            residual=residual,
            scores=scan.full_scores(p0, self.config.pool_metric, idx, w),
            method=self.method,
            site=self.site,
            info={"pool": len(pool_idx), "rounds": rounds, "iterations": iters,
                  "optimal": optimal, "history": tuple(hist)},
        )


def convex_attribution(query: Any, train: Any, **config: Any) -> Attribution:
    """One-shot :class:`ConvexAttributor` (``config``: :class:`ConvexConfig` fields)."""
    return ConvexAttributor(train, ConvexConfig(**config)).attribute(query)
