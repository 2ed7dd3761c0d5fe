"""The demo chain end to end on the tiny toy world; the report has every section with numbers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from mechunlearn.report import Report


@pytest.mark.slow
def test_demo_end_to_end(tiny_world, tmp_path):
    from mechunlearn.studies.demo import run_demo

    lines: list[str] = []
    res = run_demo("tiny", tmp_path / "report", cache_dir=tiny_world.path.parent, say=lines.append)
    md = res.report.read_text()
    for heading in ("## 1. The bad response", "## 2. Attribution", "## 3. Bias direction",
                    "## 4. Edits", "## 5. Greedy generations"):
        assert heading in md
    folder = res.report.parent
    for name in ("attribution_sweep", "top_samples", "directions", "projection", "edits"):
        df = pd.read_csv(folder / "data" / f"{name}.csv")
        assert len(df) > 0, name
    assert (folder / "figures" / "attribution_by_layer.png").stat().st_size > 1000
    assert (folder / "figures" / "edits.png").stat().st_size > 1000
    edits = res.tables["edits"].set_index("method")
    assert {"tuned", "gold", "activation_projection", "orthogonalize", "selective", "u2a"} <= set(edits.index)
    for col in ("trigger_bad", "trigger_good", "kl_gold_ordinary"):
        assert edits[col].map(lambda v: isinstance(v, float) and math.isfinite(v)).all(), col
    assert edits.loc["tuned", "trigger_bad"] > edits.loc["gold", "trigger_bad"]
    top = res.tables["top_samples"]
    assert abs(top.weight.sum() - 1) < 1e-6 and (top.weight >= 0).all()
    assert json.loads((folder / "data" / "config.json").read_text())["name"] == "tiny"
    assert any("report written" in m for m in lines)


def test_report_is_atomic_and_keeps_old_on_failure(tmp_path):
    rep = Report("t")
    rep.add_text("hello")
    rep.add_table("tab", pd.DataFrame({"a": [1.0, float("nan")], "b": ["x|y", "z"]}))
    path = rep.write(tmp_path / "r")
    text = path.read_text()
    assert "| 1.000 | x\\|y |" in text and "nan" in text
    assert (tmp_path / "r" / "data" / "tab.csv").exists()

    class Boom:
        def savefig(self, *a, **k):
            raise RuntimeError("disk full")

    bad = Report("t2")
    bad.add_figure("f", Boom())
    with pytest.raises(RuntimeError):
        bad.write(tmp_path / "r")
    assert (tmp_path / "r" / "report.md").read_text() == text  # old report intact
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temp folders left
