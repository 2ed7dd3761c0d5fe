"""The new-user breaker's CLI findings (issue 15 follow-ups), each as a test that fails
without its fix: one-line usage errors, flip and step counts from `edit unlearn`, early
argument checks, foreign directions, tokenizer agreement, versions sidecars, preference
records as training samples, store resume on other data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from _cli_helpers import WORDS, H, cli_env, jsonl
from typer.testing import CliRunner

from mechunlearn.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("findings")
    e = cli_env(root)
    e.query = jsonl(root / "q.jsonl", [{"prompt": "the fox ", "response": "lazy dog"}])
    return e


def _one_error_line(r, alone: bool = False) -> str:
    """The one ``error: ...`` line (``alone``: nothing else printed, e.g. no progress bar)."""
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.output
    assert not alone or lines == errors, r.output
    assert "╭" not in r.output and "Traceback" not in r.output
    return errors[0]


# ------------------------------------------------------------------ 1. usage errors
@pytest.mark.parametrize("args,match", [
    (["extract", "--model", "m", "--kk", "3"], "No such option: --kk"),
    (["attribute", "--model", "m", "--k", "-1"], "--k"),
    (["edit"], "Missing argument"),
    (["demo", "--threads", "-1"], "--threads"),
    (["diagnose", "--model", "m"], "Missing option"),
    (["distributed", "merge"], "Missing argument"),
    (["toyworld", "build", "a", "b"], "unexpected extra argument"),
    (["directions", "--model", "m", "--pos", "a", "--neg", "b", "--hook", H, "--k", "x"], "--k"),
])
def test_usage_errors_are_one_line_exit_2(args, match):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert match in _one_error_line(r, alone=True)


# ------------------------------------------------------------------ 2-3. edit unlearn
def test_flip_from_the_cli_and_steps_reported_separately(env, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "flipped"
    r = runner.invoke(app, ["edit", "unlearn", "--model", env.m0, "--forget", env.prefs,
                            "--retain", env.pairs, "--objective", "flip", "--steps", "3",
                            "--repair-steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = re.search(r"(\d+) forget step\(s\) of at most 3 .*then (\d+) repair step\(s\)", r.output)
    assert m, r.output
    assert 1 <= int(m.group(1)) <= 3 and int(m.group(2)) == 2
    before = load_file(str(Path(env.m0) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    # flip needs a good response per forget item: prompt/response records say how to give one
    r = runner.invoke(app, ["edit", "unlearn", "--model", env.m0, "--forget", env.pairs,
                            "--retain", env.pairs, "--objective", "flip", "--out",
                            str(tmp_path / "x")])
    assert r.exit_code == 2 and "prompt/chosen/rejected" in _one_error_line(r)


# ------------------------------------------------------------------ 4. early argument checks
def test_directions_refuses_k_above_dim_same_files_and_k_for_other_methods(env, tmp_path):
    base = ["directions", "--model", env.m0, "--hook", H, "--permutations", "0"]
    r = runner.invoke(app, base + ["--pos", env.pos, "--neg", env.neg, "--k", "100",
                                   "--out", str(tmp_path / "d1")])
    assert r.exit_code == 2 and "larger than the feature dimension 32" in _one_error_line(r)
    r = runner.invoke(app, base + ["--pos", env.pos, "--neg", env.pos, "--method", "mean_diff",
                                   "--out", str(tmp_path / "d2")])
    assert r.exit_code == 2 and "same file" in _one_error_line(r)
    r = runner.invoke(app, base + ["--pos", env.pos, "--neg", env.neg, "--method", "mean_diff",
                                   "--k", "2", "--out", str(tmp_path / "d3")])
    assert r.exit_code == 2 and "pca_bias only" in _one_error_line(r)
    r = runner.invoke(app, base + ["--pos", env.pos, "--neg", env.neg, "--k", "3",
                                   "--out", str(tmp_path / "d4")])
    assert r.exit_code == 0, r.output
    from mechunlearn.directions import Directions

    assert Directions.load(tmp_path / "d4").basis.shape == (3, 32)


def test_diagnose_checks_arguments_before_loading(env, tmp_path):
    common = ["diagnose", "--train", env.prefs, "--bad", env.query, "--judge", "dog",
              "--out", str(tmp_path / "rep")]
    # a model folder that does not exist: the argument errors come first
    r = runner.invoke(app, common + ["--model", str(tmp_path / "nomodel"), "--pos", env.pos])
    assert r.exit_code == 2 and "--pos and --neg go together" in _one_error_line(r)
    r = runner.invoke(app, common + ["--model", env.m0, "--layers", "0,7"])
    assert r.exit_code == 2 and "outside the model's blocks 0..1" in _one_error_line(r)
    r = runner.invoke(app, common + ["--model", env.m0, "--pos", env.pos, "--neg", env.pos])
    assert r.exit_code == 2 and "same file" in _one_error_line(r)
    assert not (tmp_path / "rep").exists()


# ------------------------------------------------------------------ 5. foreign directions
def test_foreign_directions_refused_unless_allowed(env, tmp_path):
    from mechunlearn.models import load_bridge
    from mechunlearn.provenance import model_fingerprint

    dirs = tmp_path / "dirs"
    r = runner.invoke(app, ["directions", "--model", env.m0, "--pos", env.pos, "--neg", env.neg,
                            "--hook", H, "--method", "mean_diff", "--permutations", "0",
                            "--out", str(dirs)])
    assert r.exit_code == 0, r.output
    edit = ["edit", "orthogonalize", "--model", env.m1, "--directions", str(dirs)]
    r = runner.invoke(app, edit + ["--out", str(tmp_path / "e1")])
    line = _one_error_line(r)
    assert r.exit_code == 2 and "--allow-foreign" in line
    for folder in (env.m0, env.m1):
        assert model_fingerprint(load_bridge(folder)) in line
    assert not (tmp_path / "e1").exists()
    r = runner.invoke(app, edit + ["--allow-foreign", "--out", str(tmp_path / "e2")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e2" / "config.json").exists()


# ------------------------------------------------------------------ 6. reference tokenizer
def test_diagnose_reference_with_another_tokenizer_is_refused_first(env, tmp_path):
    from mechunlearn.tiny_models import build_tiny

    other = build_tiny("gpt2", folder=tmp_path / "other")
    r = runner.invoke(app, ["diagnose", "--model", env.m0, "--reference", str(other),
                            "--train", env.prefs, "--bad", env.query, "--judge", "dog",
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "different tokenizers" in _one_error_line(r)
    assert not (tmp_path / "rep").exists()


# ------------------------------------------------------------------ 7-8. sidecars, prefs
def _sidecar(path: Path, kind: str) -> dict:
    meta = json.loads(path.with_name(path.name + ".mechunlearn.json").read_text())
    assert meta["kind"] == kind and meta["file"] == path.name
    assert {"torch", "transformers", "transformer-lens"} <= set(meta["versions"])
    return meta


def test_single_file_outputs_have_version_sidecars_and_prefs_train(env, tmp_path):
    att = tmp_path / "att.csv"
    r = runner.invoke(app, ["attribute", "--model", env.m0, "--train", env.prefs, "--query",
                            env.query, "--hook", H, "--k", "3", "--out", str(att)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(att)  # the CSV itself stays plain
    assert set(df["id"]) <= {f"p{i}" for i in range(16)} and abs(df.weight.sum() - 1) < 1e-6
    assert _sidecar(att, "attribution-csv")["k"] == 3
    r = runner.invoke(app, ["attribute", "--model", env.m0, "--train", env.prefs, "--query",
                            env.query, "--hook", H, "--k", "3", "--out", str(att)])
    assert r.exit_code == 2 and "already exists" in _one_error_line(r)
    r = runner.invoke(app, ["attribute", "--model", env.m0, "--train", env.prefs, "--query",
                            env.query, "--hook", H, "--k", "99", "--out", str(tmp_path / "b.csv")])
    assert r.exit_code == 2 and "--k 99 is larger than the 16 training samples" in r.output

    sw, png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    r = runner.invoke(app, ["sweep", "--model", env.m0, "--pos", env.pos, "--neg", env.neg,
                            "--permutations", "0", "--out", str(sw), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(sw)) == 2
    _sidecar(sw, "sweep-csv")
    _sidecar(png, "sweep-plot")


def test_doctor_csv_sidecar(env, tmp_path):
    csv = tmp_path / "doc.csv"
    r = runner.invoke(app, ["doctor", "--model", env.m0, "--checks", "hooks", "--csv", str(csv)])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(csv)) >= 1
    assert _sidecar(csv, "doctor-csv")["passed"] is True


# ------------------------------------------------------------------ 13. store resume
def test_extract_resume_refuses_other_data(env, tmp_path):
    from mechunlearn.storage.store import FeatureStore

    out = tmp_path / "store"
    a = jsonl(tmp_path / "a.jsonl", [{"text": f"the {w} runs"} for w in WORDS])
    b = jsonl(tmp_path / "b.jsonl", [{"text": f"a {w} sleeps"} for w in WORDS])
    base = ["extract", "--model", env.m0, "--hook", H, "--out", str(out)]
    assert runner.invoke(app, base + ["--data", a]).exit_code == 0
    r = runner.invoke(app, base + ["--data", b])
    line = _one_error_line(r)
    assert r.exit_code == 2 and "other data" in line and line.count("sha256:") == 2
    r = runner.invoke(app, base + ["--data", a])  # the same data resumes (nothing to add)
    assert r.exit_code == 0, r.output
    assert len(FeatureStore.open(out)) == len(WORDS)


def test_python_dash_m_usage_error_is_one_stderr_line():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mechunlearn", "sweep", "--pos"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "--pos" in lines[0]


def test_python_dash_m_distributed_errors_are_one_line():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mechunlearn.distributed", "merge"],
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "Missing argument 'src'" in lines[0]
