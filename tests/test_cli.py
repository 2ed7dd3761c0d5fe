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
    r = runner.invoke(app, bad_hook[:-4] + ["--out", str(tmp_path / "o2"), "--hook", "blocks.1.hook_resid_pots"])
    assert r.exit_code == 2 and "error: Unknown hook name" in r.output and "Traceback" not in r.output

    r = runner.invoke(app, ["extract", "--model", str(tmp_path / "nope"), "--data", str(data),
                            "--out", str(tmp_path / "o3"), "--hook", "blocks.0.hook_resid_post"])
    assert r.exit_code == 2 and "not a Hugging Face model folder" in r.output

    broken = tmp_path / "b.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    r = runner.invoke(app, ["extract", "--model", folder, "--data", str(broken),
                            "--out", str(tmp_path / "o4"), "--hook", "blocks.0.hook_resid_post"])
    assert r.exit_code == 2 and "b.jsonl:2" in r.output
