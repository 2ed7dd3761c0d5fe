"""Fast paths that prove themselves against their reference path.

An optimisation (KV-cache decoding, an early-stopped forward pass, ...) must give the
reference path's result. The first time a fast path runs in a process for a given key (the
kind of path and the model class), :func:`self_check` compares the two on the first batch;
on mismatch the fast path is disabled for that key, one :class:`FastPathMismatchWarning`
names the package versions, and the caller uses the reference path. Results are never
silently wrong because a dependency changed underneath.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from mechunlearn.errors import FastPathMismatchWarning  # noqa: F401 (defined in errors.py, kept importable here)
from mechunlearn.versions import versions_line

_STATE: dict[str, bool] = {}


def status() -> dict[str, bool]:
    """``{key: passed}`` for every fast path checked so far in this process."""
    return dict(_STATE)


def reset(key: str | None = None) -> None:
    """Forget the result of one check (or of all), so the next use checks again."""
    if key is None:
        _STATE.clear()
    else:
        _STATE.pop(key, None)


def close(fast: Tensor, ref: Tensor, rtol: float = 1e-3, atol: float = 1e-4) -> tuple[bool, float]:
    """Whether ``fast`` matches ``ref`` (same shape; ``max|fast - ref| <= atol + rtol *
    max|ref|``, computed in float32), and the max absolute difference."""
    if fast.shape != ref.shape:
        return False, float("inf")
    f, r = fast.detach().float().cpu(), ref.detach().float().cpu()
    if not bool(torch.isfinite(f).all()):
        return False, float("inf")
    diff = float((f - r).abs().max()) if f.numel() else 0.0
    return diff <= atol + rtol * float(r.abs().max() if r.numel() else 0.0), diff


def self_check(key: str, compare: Callable[[], tuple[bool, float] | None], what: str) -> bool:
    """Run ``compare`` once per process for ``key``; return whether the fast path may be used.

    ``compare()`` runs both paths on a small real input and returns ``(ok, max_abs_diff)``,
    or ``None`` when this input cannot decide (then ``False`` is returned for this call only
    and the next call checks again).
    On the first failure, warns once with :class:`FastPathMismatchWarning` (naming ``what``,
    the difference and the torch / transformers / transformer-lens versions) and remembers
    the failure: later calls return ``False`` without re-running.
    """
    if key in _STATE:
        return _STATE[key]
    res = compare()
    if res is None:
        return False
    ok, diff = res
    _STATE[key] = bool(ok)
    if not ok:
        warnings.warn(
            f"{what} disagreed with the reference path (max |diff| {diff:.3g}) under "
            f"{versions_line()}; using the reference path (slower, correct) for the rest of "
            "this process. Install the tested versions (pip install -c constraints.txt ...) "
            "to get the fast path back.",
            FastPathMismatchWarning, stacklevel=3)
    return bool(ok)
