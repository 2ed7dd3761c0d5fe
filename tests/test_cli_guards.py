"""Guards every command gets (mechunlearn/cli/guards.py), from a new-user run: a repeated
single-value option kept only its last value silently, and ``--out <folder holding the
inputs> --overwrite`` deleted the command's own model and data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _cli_helpers import WORDS, H, jsonl
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.models import tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _error(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A worked-example-like folder: a model and its data, written by mechunlearn."""
    root = tmp_path_factory.mktemp("guards") / "example"
    tiny_gpt2(folder=root / "m")
    jsonl(root / "pos.jsonl", [{"text": f"the quick {w} jumps"} for w in WORDS * 2])
    jsonl(root / "neg.jsonl", [{"text": f"a lazy {w} sleeps"} for w in WORDS * 2])
    return root


def _dirs(folder: Path, *extra: str) -> list[str]:
    return ["directions", "--model", str(folder / "m"), "--pos", str(folder / "pos.jsonl"),
            "--neg", str(folder / "neg.jsonl"), "--permutations", "0", *extra]


def test_an_output_holding_the_commands_inputs_is_refused_and_nothing_is_deleted(folder,
                                                                                  tmp_path):
    work = tmp_path / "example"
    shutil.copytree(folder, work)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    msg = _error(runner.invoke(app, _dirs(work, "--hook", H, "--out", str(work),
                                          "--overwrite")))
    assert "--out" in msg and "--model" in msg and "would delete it" in msg
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    # the model folder itself as --out: the same refusal
    assert "holds --model" in _error(runner.invoke(app, _dirs(work, "--hook", H, "--out",
                                                                 str(work / "m"), "--overwrite")))
    # an output elsewhere still works
    r = runner.invoke(app, _dirs(work, "--hook", H, "--out", str(tmp_path / "d")))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("extra,flag", [
    (["--hook", H, "--hook", "blocks.1.hook_resid_post"], "--hook"),
    (["--hook", H, "--method", "probe", "--method=mean_diff"], "--method"),
])
def test_a_repeated_single_value_option_is_refused(folder, tmp_path, extra, flag):
    msg = _error(runner.invoke(app, _dirs(folder, *extra, "--out", str(tmp_path / "d"))))
    assert msg == f"error: {flag} is given twice; give it once (a repeated option would keep " \
                  "only the last value)."
    assert not (tmp_path / "d").exists()


def test_repeats_in_other_commands_and_malformed_positions(folder, tmp_path):
    m, pos, neg = str(folder / "m"), str(folder / "pos.jsonl"), str(folder / "neg.jsonl")
    assert "--kinds is given twice" in _error(runner.invoke(app, [
        "sweep", "--model", m, "--pos", pos, "--neg", neg, "--kinds", "resid_post",
        "--kinds", "mlp_out", "--out", str(tmp_path / "s.csv")]))
    assert "--judge is given twice" in _error(runner.invoke(app, [
        "diagnose", "--model", m, "--train", pos, "--bad", pos, "--judge", "fox", "--judge",
        "dog", "--out", str(tmp_path / "r")]))
    for bad in ("--3", "²"):
        msg = _error(runner.invoke(app, ["extract", "--model", m, "--data", pos, "--hook", H,
                                         "--position", bad, "--out", str(tmp_path / "x")]))
        assert f"--position {bad!r} is not a token index" in msg
    assert "--steps applies to the unlearning edits" in _error(runner.invoke(app, [
        "diagnose", "--model", m, "--train", pos, "--bad", pos, "--judge", "fox", "--methods",
        "project", "--steps", "5", "--out", str(tmp_path / "r")]))
    assert not any((tmp_path / n).exists() for n in ("s.csv", "r", "x"))


def test_merge_into_its_own_source_is_refused(tmp_path):
    src = tmp_path / "sharded"
    src.mkdir()
    (src / "keep.txt").write_text("user data")
    msg = _error(runner.invoke(app, ["distributed", "merge", str(src), str(src)]))
    assert msg.startswith(f"error: DST {src} holds SRC {src}")
    assert (src / "keep.txt").read_text() == "user data"


def test_an_output_inside_an_input_folder_is_refused_by_every_command(folder, tmp_path):
    """One rule for every command (it was edit's own, stricter check): an output inside a
    folder the command reads (the model, a store) is refused before any work."""
    work = tmp_path / "example"
    shutil.copytree(folder, work)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    inside = work / "m" / "sub"
    msg = _error(runner.invoke(app, _dirs(work, "--hook", H, "--out", str(inside))))
    assert msg == (f"error: --out {inside} is inside --model {work / 'm'}, which this command "
                   "reads: the output would be written into that folder among its files. "
                   f"Choose another --out, outside {work / 'm'}.")
    assert "is inside --model" in _error(runner.invoke(app, [
        "extract", "--model", str(work / "m"), "--data", str(work / "pos.jsonl"), "--hook", H,
        "--out", str(inside)]))
    assert "is inside SRC" in _error(runner.invoke(app, [
        "distributed", "merge", str(work / "m"), str(inside)]))
    assert "is inside --model" in _error(runner.invoke(app, [
        "edit", "orthogonalize", "--model", str(work / "m"), "--directions", str(work),
        "--out", str(inside)]))
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before


def test_an_output_inside_a_cache_folder_is_allowed():
    from mechunlearn.cli.guards import refuse_inputs_inside_output
    from mechunlearn.errors import OutputPathError

    here = Path(__file__).parent
    refuse_inputs_inside_output({"out": here / "x", "cache": here},
                                {"out": "--out", "cache": "--cache"})
    with pytest.raises(OutputPathError, match="is inside --model"):
        refuse_inputs_inside_output({"out": here / "x", "model": here},
                                    {"out": "--out", "model": "--model"})
