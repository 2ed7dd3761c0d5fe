"""``doctor``: run every registered conformance check on one model and tabulate the result.

``mu.doctor("path/to/folder")`` (or a booted bridge) returns a DataFrame with one row per
verified property (columns ``check, target, status, value, tol, detail, required``);
``mechunlearn doctor --model DIR`` prints it and exits 1 when a required check fails. More
checks plug in with :func:`register` (``fn(ctx) -> list[Row]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechunlearn.conformance import dtypes, edits, stream, training  # noqa: F401 (registers)
from mechunlearn.conformance.registry import CHECKS, FAIL, NA, OK, Context, Row, register
from mechunlearn.errors import ConfigError

__all__ = ["COLUMNS", "ORDER", "doctor", "format_report", "passed", "register"]
COLUMNS = ("check", "target", "status", "value", "tol", "detail", "required")
#: built-in checks in report order; checks registered later run after these.
ORDER = ("hooks", "residual_identity", "matches_hf", "extract", "interventions", "kv_cache",
         "orthogonalize", "gradients", "unlearn", "export_hf", "bf16")


def doctor(model: Any, folder: str | os.PathLike[str] | None = None,
           checks: Sequence[str] | None = None) -> Any:
    """Run conformance checks on ``model``.

    Args:
        model: a model folder (booted with ``load_bridge`` plus
            :func:`mechunlearn.hook_fixes.correct_hooks_`) or a ``TransformerBridge``.
        folder: the bridge's ``save_pretrained`` folder, for comparison with an independent
            plain ``transformers`` copy (default: the folder ``model`` was loaded from).
        checks: names from :data:`CHECKS` (default: all, in registration order).

    Returns:
        ``pandas.DataFrame`` with :data:`COLUMNS`; ``df.attrs`` holds ``model_type``,
        ``hf_class``, ``versions`` and ``fast_paths`` (fast-path self-check results so far).
    """
    import pandas as pd

    names = ([n for n in ORDER if n in CHECKS] + [n for n in CHECKS if n not in ORDER]
             if checks is None else list(checks))
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ConfigError(f"Unknown check(s) {unknown}; registered checks: {list(CHECKS)}.")
    if isinstance(model, (str, os.PathLike)):
        from mechunlearn.hook_fixes import correct_hooks_
        from mechunlearn.models import load_bridge

        folder = Path(model) if folder is None else folder
        model = load_bridge(model)
        correct_hooks_(model)
    if not hasattr(model, "hook_dict") or not hasattr(model, "original_model"):
        raise ConfigError(f"doctor() needs a model folder or a TransformerBridge from "
                          f"boot_transformers, got {type(model).__name__}.")
    ctx = Context(model, Path(folder) if folder is not None else None)
    rows: list[Row] = []
    for name in names:
        try:
            rows.extend(CHECKS[name].fn(ctx))
        except Exception as e:  # a crashing check is a failed check, reported not hidden
            rows.append(Row(name, "check ran", FAIL, detail=f"{type(e).__name__}: {e}"[:300]))
    df = pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in rows], columns=list(COLUMNS))
    df.attrs.update(model_type=ctx.model_type, hf_class=type(ctx.hf).__name__,
                    versions=_versions(), fast_paths=_fast_paths())
    return df


def passed(df: Any) -> bool:
    """True when no required row of a :func:`doctor` table failed."""
    return not bool(((df["status"] == FAIL) & df["required"]).any())


def _versions() -> dict[str, str]:
    from mechunlearn.versions import versions

    return versions()


def _fast_paths() -> dict[str, bool]:
    try:
        from mechunlearn.fastpath import status
    except ImportError:  # pragma: no cover - older checkouts
        return {}
    return status()


def format_report(df: Any, width: int = 70) -> str:
    """Plain-text report: header, versions, one line per row, summary."""
    a = df.attrs
    lines = [f"model: {a.get('hf_class', '?')} (model_type {a.get('model_type', '?')})",
             "versions: " + ", ".join(f"{k} {v}" for k, v in a.get("versions", {}).items())]
    for k, ok in a.get("fast_paths", {}).items():
        lines.append(f"fast path {k}: {'ok' if ok else 'FAILED (disabled)'}")
    w = max(len(str(t)) for t in df["target"]) if len(df) else 10
    w = min(w, width)
    for r in df.itertuples(index=False):
        val = "" if r.value != r.value else f"{r.value:.2e}"  # NaN check
        tail = f"  {r.detail}" if r.detail and r.status != OK else ""
        lines.append(f"{r.status:>4}  {r.check:<17} {str(r.target)[:w]:<{w}} {val:>9}{tail}")
    n = {s: int((df["status"] == s).sum()) for s in (OK, NA, FAIL)}
    lines.append(f"{n[OK]} ok, {n[NA]} n/a, {n[FAIL]} FAIL"
                 + ("" if passed(df) else " - a check the library relies on failed"))
    return "\n".join(lines)
