"""Layer-by-metric figures for sweep results (matplotlib, no global pyplot state).

Figures are built with ``matplotlib.figure.Figure`` directly, so they work headless (no
display, any backend) and never leak into ``pyplot``'s figure list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mechunlearn.errors import ConfigError


def _check_cols(df: pd.DataFrame, cols: Sequence[str | None]) -> None:
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise ConfigError(f"DataFrame has no column(s) {missing}; columns: {list(df.columns)}.")


def plot_layers(
    df: pd.DataFrame,
    metric: str | Sequence[str],
    *,
    x: str = "layer",
    hue: str | None = "method",
    null: tuple[str, str] | None = None,
    chance: float | None = None,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One panel per metric: ``metric`` against ``x`` (layer), one line per ``hue`` value.

    Args:
        df: e.g. the output of :func:`mechunlearn.sweep.sweep`.
        metric: column name(s) to plot (one panel each).
        x: x-axis column (default ``layer``).
        hue: column whose values get separate lines (``None`` or absent: one line).
        null: ``(low_col, high_col)`` of a permutation null band, drawn shaded per line
            (e.g. ``("null_auc_q05", "null_auc_q95")``); with several metrics only on panels
            whose name contains ``auc``.
        chance: draw a dashed horizontal line at this value (e.g. 0.5 for AUC).
        title: figure title.
        save: write the figure here (format from the suffix; parent folder is created).

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise ConfigError("plot_layers needs at least one metric.")
    _check_cols(df, [x, *metrics, *(null or ())])
    hue = hue if hue is not None and hue in df.columns else None
    fig = Figure(figsize=figsize or (4.2 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    groups: list[tuple[Any, pd.DataFrame]] = list(df.groupby(hue, sort=True)) if hue else [(None, df)]
    for ax, m in zip(axes, metrics):
        for label, g in groups:
            g = g.groupby(x, sort=True).mean(numeric_only=True).reset_index()
            (line,) = ax.plot(g[x], g[m], marker="o", ms=3, label=None if label is None else str(label))
            if null is not None and (len(metrics) == 1 or "auc" in m):
                ax.fill_between(g[x], g[null[0]], g[null[1]], color=line.get_color(), alpha=0.15,
                                linewidth=0)
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    if hue:
        axes[-1].legend(title=hue, fontsize=7, loc="best", framealpha=0.6)
    if title:
        fig.suptitle(title)
    if null is not None:
        fig.text(0.01, 0.005, "shaded: permutation null (label-shuffled refits)", fontsize=6)
    if save is not None:
        save_figure(fig, save, dpi=120)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110,
                close: bool = False) -> Path:
    """Write a matplotlib figure to ``path`` atomically (temporary sibling, then rename).

    The format comes from the suffix (``.png`` when there is none); an existing file at
    ``path`` is replaced (an explicit save path), a folder or a path under a file is refused
    (:func:`mechunlearn.outputs.check_output_file`: ``OutputPathError``). ``close``: also
    ``plt.close(fig)`` (figures made with ``pyplot``). Returns the path written.
    """
    from mechunlearn.atomic import atomic_write
    from mechunlearn.outputs import check_output_file

    check_output_file(path, overwrite=True)
    fmt = Path(path).suffix.lstrip(".") or "png"
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out
