"""Multi-objective parameter search returning a Pareto front (no Optuna needed).

:func:`pareto_search` minimises several objectives at once (e.g. the rate of the target
behaviour and the KL divergence on neutral prompts, as the Heretic abliteration tool,
github.com/p-e-w/heretic, does with Optuna's TPE sampler). Here the sampler is plain: the first
``n_random`` trials are drawn uniformly from the space, the rest mutate a random member of
the current Pareto front (Gaussian steps of ``mutation`` × each range, categorical values
resampled with probability ``mutation``). :func:`pareto_mask` is the non-dominated filter and
:func:`plot_front` the figure.

A space is a dict: ``name: (low, high)`` (floats: uniform; ints: uniform integers),
``name: [choice, ...]`` (categorical) or ``name: value`` (fixed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mechunlearn.errors import ConfigError, NonFiniteError


def pareto_mask(values: Any) -> np.ndarray:
    """Bool ``[n]``: row i of ``values [n, m]`` (all objectives minimised) is non-dominated,
    i.e. no other row is <= in every objective and < in one. Duplicates are all kept."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ConfigError(f"values must be [n, m], got shape {v.shape}.")
    if not np.isfinite(v).all():
        raise NonFiniteError("Objective values contain NaN or inf; cannot rank them.")
    le = (v[:, None, :] <= v[None, :, :]).all(-1)   # [i, j]: i <= j everywhere
    lt = (v[:, None, :] < v[None, :, :]).any(-1)
    dominated = (le & lt).any(0)                     # some i dominates j
    return ~dominated


def _check_space(space: Mapping[str, Any]) -> None:
    if not space:
        raise ConfigError("The search space is empty.")
    for k, s in space.items():
        if isinstance(s, tuple):
            if len(s) != 2 or not all(isinstance(x, (int, float)) for x in s) or s[0] > s[1]:
                raise ConfigError(f"Range {k!r} must be (low, high) numbers with low <= high, got {s!r}.")
        elif isinstance(s, list) and not s:
            raise ConfigError(f"Choice {k!r} has no values.")


def _sample(space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, s in space.items():
        if isinstance(s, tuple):
            lo, hi = s
            out[k] = (int(rng.integers(lo, hi + 1)) if isinstance(lo, int) and isinstance(hi, int)
                      else float(rng.uniform(lo, hi)))
        elif isinstance(s, list):
            out[k] = s[int(rng.integers(len(s)))]
        else:
            out[k] = s
    return out


def _mutate(p: dict[str, Any], space: Mapping[str, Any], rng: np.random.Generator,
            scale: float) -> dict[str, Any]:
    out = dict(p)
    for k, s in space.items():
        if isinstance(s, tuple):
            lo, hi = s
            x = float(np.clip(p[k] + rng.normal(0, scale * (hi - lo)), lo, hi))
            out[k] = int(round(x)) if isinstance(lo, int) and isinstance(hi, int) else x
        elif isinstance(s, list) and rng.random() < scale:
            out[k] = s[int(rng.integers(len(s)))]
    return out


def pareto_search(evaluate: Callable[[dict[str, Any]], Mapping[str, float]],
                  space: Mapping[str, Any], objectives: Sequence[str] = ("target_rate", "kl"),
                  n_trials: int = 40, n_random: int | None = None, mutation: float = 0.15,
                  seed: int = 0, baseline: Mapping[str, float] | None = None,
                  progress: Callable[[int, dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Search ``space`` for parameters minimising every objective of ``evaluate(params)``.

    Args:
        evaluate: ``params -> {objective: value, ...}`` (extra keys are kept as columns).
        space: see module docstring.
        objectives: keys of ``evaluate``'s result to minimise.
        n_trials: evaluations; ``n_random`` of them uniform (default half), the rest mutations.
        baseline: objective values of "no edit", added as row ``trial = -1`` (it competes for
            the front, so a front point must beat it somewhere).

    Returns:
        DataFrame, one row per trial: ``trial``, the parameters, ``evaluate``'s values,
        ``seconds`` and ``pareto`` (non-dominated over all rows), front sorted by the first
        objective. ``df.attrs["objectives"]`` names the objectives.
    """
    _check_space(space)
    if not objectives:
        raise ConfigError("Need at least one objective.")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"n_trials must be a positive int, got {n_trials!r}.")
    n_random = max(1, n_trials // 2) if n_random is None else n_random
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    if baseline is not None:
        missing = [o for o in objectives if o not in baseline]
        if missing:
            raise ConfigError(f"baseline lacks objective(s) {missing}.")
        rows.append({"trial": -1, **dict(baseline), "seconds": 0.0})
    params: list[dict[str, Any]] = []
    for t in range(n_trials):
        done = [r for r in rows if r["trial"] >= 0]
        if t < n_random or not done:
            p = _sample(space, rng)
        else:
            front = np.flatnonzero(pareto_mask([[r[o] for o in objectives] for r in done]))
            p = _mutate(params[int(rng.choice(front))], space, rng, mutation)
        t0 = time.perf_counter()
        res = dict(evaluate(p))
        missing = [o for o in objectives if o not in res]
        if missing:
            raise ConfigError(f"evaluate() returned no {missing} (got {sorted(res)}).")
        rows.append({"trial": t, **p, **res, "seconds": time.perf_counter() - t0})
        params.append(p)
        if progress is not None:
            progress(t, rows[-1])
    df = pd.DataFrame(rows)
    df["pareto"] = pareto_mask(df[list(objectives)].to_numpy(float))
    df.attrs["objectives"] = list(objectives)
    return df


def front(df: pd.DataFrame) -> pd.DataFrame:
    """The Pareto rows of a :func:`pareto_search` result, sorted by the first objective."""
    obj = df.attrs.get("objectives") or []
    out = df[df["pareto"]]
    return out.sort_values(list(obj)).reset_index(drop=True) if obj else out


def plot_front(df: pd.DataFrame, x: str = "kl", y: str = "target_rate", title: str | None = None,
               save: str | os.PathLike[str] | None = None) -> Figure:
    """Every trial (grey), the Pareto front (line) and the no-edit baseline (star) in
    ``x``-``y`` (both minimised); returns a pyplot-free ``Figure``."""
    for c in (x, y, "pareto", "trial"):
        if c not in df.columns:
            raise ConfigError(f"DataFrame has no column {c!r}; columns: {list(df.columns)}.")
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    trials = df[df.trial >= 0]
    ax.scatter(trials[x], trials[y], s=14, color="0.7", label="trials")
    fr = df[df.pareto].sort_values(x)
    ax.plot(fr[x], fr[y], "o-", color="C3", label="Pareto front")
    base = df[df.trial < 0]
    if len(base):
        ax.scatter(base[x], base[y], marker="*", s=150, color="C0", label="no edit", zorder=3)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x}")
    ax.legend(frameon=False)
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=120)
    return fig
