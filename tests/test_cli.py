"""CLI: useful --help, one-line errors for bad input, extract end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.store import FeatureStore

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "extract" in r.output
    r = runner.invoke(app, ["extract", "--help"])
    assert r.exit_code == 0 and "hook" in r.output


def test_extract_end_to_end_and_bad_inputs(tmp_path):
    from mechunlearn.models import tiny_gpt2

    folder = str(tmp_path / "model")
    tiny_gpt2(folder=folder)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"the fox {i} ", "response": "jumps", "id": f"s{i}"})
                              for i in range(5)))
    out = tmp_path / "store"
    args = ["extract", "--model", folder, "--data", str(data), "--out", str(out),
            "--hook", "blocks.1.hook_resid_post", "--position", "response_mean"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    st = FeatureStore.open(out)
    assert len(st) == 5 and st.ids == [f"s{i}" for i in range(5)]

    bad_hook = list(args)
    bad_hook[bad_hook.index("blocks.1.hook_resid_post")] = "blocks.1.hook_resid_pots"
    bad_hook[bad_hook.index(str(out))] = str(tmp_path / "o2")
    r = runner.invoke(app, bad_hook)
    assert r.exit_code == 2 and "error: Unknown hook name" in r.output and "Traceback" not in r.output

    r = runner.invoke(app, ["extract", "--model", str(tmp_path / "nope"), "--data", str(data),
                            "--out", str(tmp_path / "o3"), "--hook", "blocks.0.hook_resid_post"])
    assert r.exit_code == 2 and "nope" in r.output and "is missing" in r.output

    broken = tmp_path / "b.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    r = runner.invoke(app, ["extract", "--model", folder, "--data", str(broken),
                            "--out", str(tmp_path / "o4"), "--hook", "blocks.0.hook_resid_post"])
    assert r.exit_code == 2 and "b.jsonl:2" in r.output


def _jsonl(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return str(path)


def test_capability_commands(tmp_path):
    from mechunlearn.models import tiny_gpt2

    folder = str(tmp_path / "model")
    tiny_gpt2(folder=folder)
    words = ["fox", "dog", "quick", "lazy", "brown", "jumps"]
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": f"the {a} ", "response": f"{b} {a}", "id": f"t{i}"}
                                              for i, (a, b) in enumerate((a, b) for a in words for b in words)])
    query = _jsonl(tmp_path / "q.jsonl", [{"prompt": "the fox ", "response": "dog fox", "id": "q0"}])
    r = runner.invoke(app, ["attribute", "--model", folder, "--train", train, "--query", query,
                            "--hook", "blocks.1.hook_resid_post", "--k", "4",
                            "--out", str(tmp_path / "att.csv")])
    assert r.exit_code == 0, r.output
    import pandas as pd

    att = pd.read_csv(tmp_path / "att.csv")
    assert len(att) >= 1 and abs(att.weight.sum() - 1) < 1e-6 and (att.weight >= 0).all()

    pos = _jsonl(tmp_path / "pos.jsonl", [{"text": f"the quick {w} jumps"} for w in words * 2])
    neg = _jsonl(tmp_path / "neg.jsonl", [{"text": f"a lazy {w} sleeps"} for w in words * 2])
    r = runner.invoke(app, ["directions", "--model", folder, "--pos", pos, "--neg", neg,
                            "--hook", "blocks.0.hook_resid_post", "--method", "mean_diff",
                            "--permutations", "5", "--out", str(tmp_path / "dirs")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["edit", "orthogonalize", "--model", folder,
                            "--directions", str(tmp_path / "dirs"), "--out", str(tmp_path / "edited")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "edited" / "config.json").exists()
    r = runner.invoke(app, ["sweep", "--model", folder, "--pos", pos, "--neg", neg,
                            "--permutations", "0", "--out", str(tmp_path / "sweep.csv")])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 2

    r = runner.invoke(app, ["attribute", "--model", folder, "--train", train, "--query", query,
                            "--hook", "blocks.1.hook_resid_post", "--method", "magic"])
    assert r.exit_code == 2 and "--method" in r.output
    r = runner.invoke(app, ["edit", "orthogonalize", "--model", folder, "--out", str(tmp_path / "e2")])
    assert r.exit_code == 2 and "--directions" in r.output
    r = runner.invoke(app, ["edit", "shrink", "--model", folder, "--out", str(tmp_path / "e3")])
    assert r.exit_code == 2


def test_seal_command_on_a_slice(tmp_path, hh_rlhf_path):
    import gzip

    with gzip.open(hh_rlhf_path, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(80)]
    data = tmp_path / "slice.jsonl"
    data.write_text("".join(lines) + "{broken json\n")
    out = tmp_path / "seal"
    r = runner.invoke(app, ["seal", "--data", str(data), "--out", str(out), "--boot", "20",
                            "--max-length", "64", "--cache", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert "test agreement" in r.output and (out / "summary.md").exists()
    assert (out / "sites.csv").exists()
    r = runner.invoke(app, ["seal", "--data", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "error:" in r.output
