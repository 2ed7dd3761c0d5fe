"""The demo (``diagnose`` on the tiny toy world) end to end: the report's numbers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from mechunlearn.report import Report


@pytest.mark.slow
def test_demo_end_to_end(tiny_world, tmp_path):
    """The demo is ``diagnose`` on the toy world plus its ground truth; every number checked."""
    from mechunlearn.studies.demo import run_demo

    lines: list[str] = []
    res = run_demo("tiny", tmp_path / "report", cache_dir=tiny_world.path.parent, say=lines.append)
    md = res.report.read_text()
    for heading in ("## 1. Bad cases", "## 2. Attribution", "## 3. Bias direction",
                    "## 4. Edits", "## 5. Greedy generations", "## 6. Against the toy world"):
        assert heading in md
    folder = res.report.parent
    # attribution against the planted poison: above chance at the Site chosen without it
    sweep = pd.read_csv(folder / "data" / "attribution_sweep.csv")
    site = res.diagnosis.attribution.site.key
    conv = sweep[(sweep.site == site) & (sweep.method == "convex")].iloc[0]
    assert conv.auc > 0.75 and conv.precision_at_k > 0.5
    top = res.tables["top_samples"]
    assert (top.weight >= 0).all() and top.weight.sum() <= 1 + 1e-6
    assert top[top.chosen_judged_bad].in_truth.mean() > 0.5  # the forget set is mostly poison
    # the direction has held-out evidence
    d = res.tables["directions"].set_index("method")
    assert d.loc["mean_diff", "heldout_auc"] > 0.8
    # edits: the unlearning edits lower the held-out bad rate, each is undone, gold is a row
    e = pd.read_csv(folder / "data" / "edits.csv").set_index("variant")
    assert e.loc["unedited", "bad_rate_heldout"] > e.loc["gold", "bad_rate_heldout"]
    for v in ("unlearn", "selective", "u2a"):
        assert e.loc[v, "bad_rate_heldout"] < e.loc["unedited", "bad_rate_heldout"], v
        assert e.loc[v, "gap_closed"] > 0.5 and e.loc[v, "good_rate_ordinary"] >= 0.9, v
        assert e.loc[v, "trigger_good"] > e.loc["unedited", "trigger_good"], v
    # each unlearning edit says how it stopped and how many times it decoded
    assert "decodes" in e.loc["unlearn", "detail"] and "stopped" in e.loc["unlearn", "detail"]
    measured = e[e.status == "measured"]
    assert measured.restored.astype(bool).all()
    for col in ("trigger_good", "bias", "kl_gold_ordinary", "kl_ordinary", "seconds"):
        vals = e.loc[e.status.isin(["measured", "reference"]), col]
        assert vals.map(lambda v: isinstance(v, float) and math.isfinite(v)).all(), col
    assert e.loc["gold", "kl_gold_ordinary"] == pytest.approx(0, abs=1e-9)
    assert e.loc["unedited", "kl_ordinary"] == pytest.approx(0, abs=1e-9)
    # the second planted defect: projecting the tuned-vs-SFT direction lowers refusals
    b = res.tables["bias_projection"].set_index("variant")["bias"]
    assert b["tuned"] > b["sft"] and b.iloc[2] < b["tuned"]
    # generations side by side, timings, world config
    g = pd.read_csv(folder / "data" / "generations.csv")
    assert {"unedited", "unlearn", "gold"} <= set(g.columns) and len(g) > 0
    assert res.timings["total"] > 0 and res.timings["edit_and_verify"] > 0
    assert (folder / "figures" / "attribution_by_layer.png").stat().st_size > 1000
    assert (folder / "figures" / "edit_rates.png").stat().st_size > 1000
    assert json.loads((folder / "data" / "config.json").read_text())["world"]["name"] == "tiny"
    assert any("report written" in m for m in lines)
    # the robustness section (on by default): every measured variant attacked, numbers finite
    assert "## Robustness" in md and "Relearning data:" in md
    rob = pd.read_csv(folder / "data" / "robustness.csv").set_index("variant")
    assert {"unedited", "project", "unlearn", "gold"} <= set(rob.index)
    for v in rob.index:
        for col in ("robustness_bad_rate", "relearn_bad_rate", "int8_bad_rate"):
            assert math.isfinite(rob.loc[v, col]), (v, col)
    assert rob.loc["unedited", "robustness_bad_rate"] > rob.loc["gold", "robustness_bad_rate"]
    assert (folder / "data" / "robustness_layers.csv").exists()


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
