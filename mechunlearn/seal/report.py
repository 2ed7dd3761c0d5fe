"""The SEAL report: one DataFrame per metric, three plots and a short Markdown summary.

:func:`write_report` writes ``<table>.csv`` files, ``imprint.png`` (coefficients with CIs),
``resistance_by_feature.png``, ``robustness_by_layer.png`` (when an activation sweep is
given) and ``summary.md`` into a folder; every file is written atomically.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.seal.metrics import Resistance


@dataclass(frozen=True)
class SealReport:
    """Results of a SEAL run.

    Attributes:
        resistance: ``{"before": Resistance, "after": Resistance, ...}`` (e.g. random head
            vs trained head, or train/test).
        resistance_by_feature: from :func:`~mechunlearn.seal.metrics.resistance_by_feature`.
        imprint: from :func:`~mechunlearn.seal.metrics.feature_imprint`.
        text_robustness: from :func:`~mechunlearn.seal.robustness.text_robustness`.
        activation_robustness: from :func:`~mechunlearn.seal.robustness.activation_robustness`
            (rows of several sweeps may be concatenated).
        most_resistant: from :func:`~mechunlearn.seal.metrics.most_resistant`.
        info: free-form facts for the summary (model, Site, data, timings, ...).
    """

    resistance: dict[str, Resistance]
    resistance_by_feature: pd.DataFrame
    imprint: pd.DataFrame
    text_robustness: pd.DataFrame | None = None
    activation_robustness: pd.DataFrame | None = None
    most_resistant: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every metric as a DataFrame."""
        out = {"resistance": pd.DataFrame([{"split": k, **v.to_dict()}
                                           for k, v in self.resistance.items()]),
               "resistance_by_feature": self.resistance_by_feature, "imprint": self.imprint}
        for name in ("text_robustness", "activation_robustness", "most_resistant"):
            df = getattr(self, name)
            if df is not None:
                out[name] = df
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    from mechunlearn.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    _atomic_write(path, buf.getvalue())


def plot_imprint(imprint: pd.DataFrame, target: str = "score") -> Any:
    """Horizontal bars of imprint coefficients with CI whiskers (intercept omitted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = imprint[(imprint["target"] == target) & (imprint["feature"] != "(intercept)")]
    df = df.sort_values("coef")
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(df) + 1.2))
    colors = ["tab:green" if k == "target" else "tab:red" if k == "spoiler" else "tab:gray"
              for k in df["kind"]]
    err = [(df["coef"] - df["ci_low"]).clip(lower=0), (df["ci_high"] - df["coef"]).clip(lower=0)]
    ax.barh(df["feature"], df["coef"], xerr=err, color=colors, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"imprint on {target} (green: target, red: spoiler)")
    return fig


def plot_resistance_by_feature(table: pd.DataFrame) -> Any:
    """Grouped bars: resistance per feature when chosen / rejected has more of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    piv = table.pivot(index="feature", columns="group", values="resistance")
    piv = piv[[c for c in ("chosen_more", "equal", "rejected_more") if c in piv.columns]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    piv.plot.bar(ax=ax)
    ax.set_ylabel("alignment resistance")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=30)
    return fig


def plot_robustness_by_layer(sweep: pd.DataFrame) -> Any:
    """Agreement after the edit and mean |score change| per layer, one line per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    key = "sweep" if "sweep" in sweep.columns else "mode"
    for name, g in sweep.groupby(key):
        g = g.sort_values("layer")
        a1.plot(g["layer"], g["agreement_after"], marker="o", label=str(name))
        a2.plot(g["layer"], g["mean_abs_delta"], marker="o", label=str(name))
    if len(sweep):
        a1.axhline(float(sweep["agreement_before"].iloc[0]), color="gray", ls="--",
                   label="no edit")
    a1.set_xlabel("layer")
    a1.set_ylabel("agreement with human labels")
    a2.set_xlabel("layer")
    a2.set_ylabel("mean |reward change|")
    a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _table(title: str, columns: list[str], rows: list[str]) -> list[str]:
    """Markdown lines of one report section: heading, table header and the given rows."""
    return ["", f"## {title}", "", "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns), *rows]


def summary_markdown(report: SealReport, top_k: int = 5) -> str:
    """A short Markdown summary of the report."""
    lines = ["# SEAL report", ""]
    for k, v in report.info.items():
        lines.append(f"- **{k}**: {v}")
    lines += _table("Alignment resistance", ["split", "n", "agreement", "resistance", "ties"],
                    [f"| {k} | {r.n} | {r.agreement:.3f} | {r.resistance:.3f} | {r.ties:.3f} |"
                     for k, r in report.resistance.items()])
    imp = report.imprint[(report.imprint["feature"] != "(intercept)")].copy()
    for target in ("score", "reward_diff"):
        t = imp[imp["target"] == target].reindex(
            imp[imp["target"] == target]["coef"].abs().sort_values(ascending=False).index)
        lines += _table(f"Top feature imprints on {target}", ["feature", "kind", "coef", "95% CI"],
                        [f"| {r.feature} | {r.kind} | {r.coef:+.3f} | "
                         f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] |" for _, r in t.head(top_k).iterrows()])
    if report.text_robustness is not None and len(report.text_robustness):
        lines += _table("Text robustness (preference flips)",
                        ["perturbation", "side", "changed", "flip rate", "mean delta"],
                        [f"| {r.perturbation} | {r.side} | {r.n_changed} | {r.flip_rate:.3f} | "
                         f"{r.mean_delta:+.3f} |" for _, r in report.text_robustness.iterrows()])
    if report.activation_robustness is not None and len(report.activation_robustness):
        sw = report.activation_robustness
        lines += _table("Activation robustness by layer",
                        ["sweep", "site", "agreement before", "after", "flip rate",
                         "mean abs delta"],
                        [f"| {r['sweep'] if 'sweep' in sw.columns else r['mode']} | {r.site} | "
                         f"{r.agreement_before:.3f} | {r.agreement_after:.3f} | {r.flip_rate:.3f} | "
                         f"{r.mean_abs_delta:.3f} |" for _, r in sw.iterrows()])
    return "\n".join(lines) + "\n"


def write_report(report: SealReport, folder: str | os.PathLike[str], overwrite: bool = False,
                 extra_tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write CSV tables (plus ``extra_tables``), PNG plots and ``summary.md`` into ``folder``.

    Written by :func:`mechunlearn.outputs.output_folder`: built in a temporary folder and
    moved into place; a previous SEAL report there is replaced, a folder holding other files
    is refused (``overwrite=True`` also replaces another kind of mechunlearn output), and
    ``.mechunlearn.json`` records the package versions.
    """
    from mechunlearn.outputs import output_folder

    tables = {**report.tables(), **(extra_tables or {})}
    with output_folder(folder, "seal-report", overwrite=overwrite) as p:
        for name, df in tables.items():
            (p / f"{name}.csv").write_bytes(df.to_csv(index=False).encode())
        if len(report.imprint):
            _save_fig(plot_imprint(report.imprint), p / "imprint.png")
        if len(report.resistance_by_feature):
            _save_fig(plot_resistance_by_feature(report.resistance_by_feature),
                      p / "resistance_by_feature.png")
        if report.activation_robustness is not None and len(report.activation_robustness):
            _save_fig(plot_robustness_by_layer(report.activation_robustness),
                      p / "robustness_by_layer.png")
        (p / "summary.md").write_text(summary_markdown(report))
    return Path(folder)
