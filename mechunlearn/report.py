"""Self-contained report folders: Markdown + PNG figures + the CSV/JSON data behind each.

``Report`` collects sections (Markdown text, tables, figures) and ``write(path)`` renders them
through :func:`mechunlearn.outputs.output_folder`: into a temporary folder that then replaces
``path``, so a crash never leaves a half-written report, a previous report at ``path`` survives
until the new one is complete, a folder holding anything else is never touched, and
``.mechunlearn.json`` records the package versions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Report:
    """A report being assembled. ``add_*`` methods append to the body in order."""

    title: str
    parts: list[tuple[str, Any]] = field(default_factory=list)

    def add_text(self, markdown: str) -> None:
        """Append a Markdown paragraph or heading."""
        self.parts.append(("text", markdown))

    def add_table(self, name: str, df: pd.DataFrame, caption: str = "", floatfmt: str = ".3f",
                  max_rows: int = 40) -> None:
        """Append a table (rendered as Markdown; full data saved as ``data/{name}.csv``)."""
        self.parts.append(("table", (name, df.copy(), caption, floatfmt, max_rows)))

    def add_figure(self, name: str, fig: Any, caption: str = "",
                   data: pd.DataFrame | None = None) -> None:
        """Append a matplotlib figure (saved as ``figures/{name}.png``, data as CSV)."""
        self.parts.append(("figure", (name, fig, caption, data)))

    def add_json(self, name: str, obj: Any) -> None:
        """Save ``obj`` as ``data/{name}.json`` (not shown in the Markdown)."""
        self.parts.append(("json", (name, obj)))

    def write(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Render to folder ``path``. Returns the path of ``report.md``.

        A previous report at ``path`` is replaced; a folder holding files mechunlearn did not
        write is refused (:class:`~mechunlearn.errors.OutputExistsError`); ``overwrite=True``
        also replaces another kind of mechunlearn output.
        """
        import matplotlib

        from mechunlearn.outputs import output_folder

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        with output_folder(path, "report", overwrite=overwrite) as tmp:
            (tmp / "figures").mkdir()
            (tmp / "data").mkdir()
            lines = [f"# {self.title}", ""]
            for kind, payload in self.parts:
                if kind == "text":
                    lines += [payload, ""]
                elif kind == "table":
                    name, df, caption, fmt, max_rows = payload
                    df.to_csv(tmp / "data" / f"{name}.csv", index=False)
                    if caption:
                        lines += [f"*{caption}* (data: `data/{name}.csv`)", ""]
                    lines += [_markdown_table(df.head(max_rows), fmt), ""]
                elif kind == "figure":
                    name, fig, caption, data = payload
                    fig.savefig(tmp / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
                    plt.close(fig)
                    ref = ""
                    if data is not None:
                        data.to_csv(tmp / "data" / f"{name}.csv", index=False)
                        ref = f" (data: `data/{name}.csv`)"
                    lines += [f"![{caption or name}](figures/{name}.png)", "",
                              f"*{caption}*{ref}" if caption else "", ""]
                elif kind == "json":
                    name, obj = payload
                    (tmp / "data" / f"{name}.json").write_text(json.dumps(obj, indent=1, default=str))
            (tmp / "report.md").write_text("\n".join(lines))
        return Path(os.path.abspath(Path(path).expanduser())) / "report.md"


def _markdown_table(df: pd.DataFrame, floatfmt: str) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if v != v else format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(out)
