"""Session 6 new-user run (task E): data the model cannot read, too few samples for the
held-out folds, and preference records where pairs are read, are refused before any
forward pass with one line naming the option, the file and the sample's id; no output
folder is left behind. Each test fails without its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli_helpers import H, cli_env, jsonl
from _cli_helpers import cli_error as _error
from typer.testing import CliRunner

from mechunlearn.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("new_user_e")
    e = cli_env(root)
    texts = [{"id": f"t{i}", "text": f"the quick fox {i}"} for i in range(12)]
    e.long = jsonl(root / "long.jsonl", texts + [{"id": "too-long", "text": "fox " * 300}])
    e.blank = jsonl(root / "blank.jsonl", texts + [{"id": "blank-one", "text": "   "}])
    e.two = jsonl(root / "two.jsonl", texts[:2])
    return e


@pytest.mark.parametrize("which, words", [("long", ["too-long", "context"]),
                                          ("blank", ["blank-one", "blank"])])
def test_extract_unreadable_sample_named_and_nothing_written(env, which, words):
    out = env.root / f"feats_{which}"
    path = getattr(env, which)
    r = runner.invoke(app, ["extract", "--model", env.m0, "--data", path, "--hook", H,
                            "--out", str(out), "--batch-size", "4"])
    line = _error(r)
    assert f"--data {path}" in line and all(w in line for w in words), line
    assert not out.exists()  # the store used to be created, then left with 0 rows


def test_directions_long_sample_named(env):
    out = env.root / "dirs_long"
    r = runner.invoke(app, ["directions", "--model", env.m0, "--pos", env.long, "--neg",
                            env.neg, "--hook", H, "--out", str(out), "--permutations", "0"])
    line = _error(r)
    assert "--pos" in line and "too-long" in line and "max_length=" not in line, line
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["directions", "sweep"])
def test_too_few_samples_for_the_folds(env, cmd):
    out = env.root / (f"{cmd}_two" + (".csv" if cmd == "sweep" else ""))
    r = runner.invoke(app, [cmd, "--model", env.m0, "--pos", env.two, "--neg", env.neg,
                            "--out", str(out), *(["--hook", H] if cmd == "directions" else [])])
    line = _error(r)
    assert f"--pos {env.two} holds 2 sample(s)" in line and "at least 5" in line, line
    assert "n_splits" not in line and not out.exists()


def test_attribute_query_of_preference_records_names_query(env):
    out = env.root / "att.csv"
    r = runner.invoke(app, ["attribute", "--model", env.m0, "--train", env.pairs, "--query",
                            env.prefs, "--hook", H, "--k", "2", "--out", str(out)])
    line = _error(r)
    assert f"--query {env.prefs}" in line, line
    assert not Path(out).exists()


def test_unlearn_forget_and_retain_same_file_refused(env):
    out = env.root / "unlearned"
    r = runner.invoke(app, ["edit", "unlearn", "--model", env.m0, "--forget", env.pairs,
                            "--retain", env.pairs, "--steps", "1", "--out", str(out)])
    line = _error(r)
    assert "--forget and --retain name the same file" in line, line
    assert not out.exists()  # it used to warn, then train and write the model


def test_diagnose_reference_same_as_model_refused_up_front(env):
    out = env.root / "diag"
    bad = jsonl(env.root / "bad12.jsonl", [{"text": f"the quick fox {i} "} for i in range(12)])
    r = runner.invoke(app, ["diagnose", "--model", env.m0, "--train", env.prefs, "--bad",
                            bad, "--judge", "fox", "--reference", env.m0 + "/",
                            "--no-robustness", "--out", str(out)])
    line = _error(r)
    assert "--reference" in line and "same folder as --model" in line, line
    assert "[1/5]" not in r.output and not out.exists()  # it failed at step 3 before


def test_diagnose_too_few_bad_prompts_message_reads(env):
    bad = jsonl(env.root / "bad4.jsonl", [{"text": f"the quick fox {i} "} for i in range(4)])
    r = runner.invoke(app, ["diagnose", "--model", env.m0, "--train", env.prefs, "--bad",
                            bad, "--judge", "fox", "--reference", env.m1, "--no-robustness",
                            "--out", str(env.root / "diag4")])
    line = _error(r)
    assert "held-out evidence needs at least 5" in line and "---" not in line, line


@pytest.mark.parametrize("cmd", ["extract", "directions"])
def test_response_mean_on_text_records_names_the_file(env, cmd):
    out = env.root / f"{cmd}_rm"
    data = ["--data", env.pos] if cmd == "extract" else ["--pos", env.pos, "--neg", env.neg]
    r = runner.invoke(app, [cmd, "--model", env.m0, *data, "--hook", H, "--position",
                            "response_mean", "--out", str(out)])
    line = _error(r)
    assert f"{env.pos} holds 'text' records" in line and "response_mask=" not in line, line
    assert not out.exists()


def test_directions_without_permutations_says_so(env):
    out = env.root / "dirs_p0"
    r = runner.invoke(app, ["directions", "--model", env.m0, "--pos", env.pos, "--neg",
                            env.neg, "--hook", H, "--permutations", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "no permutation test (--permutations 0)" in r.output and "p nan" not in r.output


@pytest.mark.parametrize("resume", [False, True])
def test_diagnose_ctrl_c_says_what_was_kept(env, monkeypatch, resume):
    import mechunlearn.studies.diagnose as diag

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(diag, "diagnose", interrupted)
    out = env.root / f"diag_int_{resume}"
    bad = jsonl(env.root / "bad12.jsonl", [{"text": f"the quick fox {i} "} for i in range(12)])
    train = jsonl(env.root / "prefs12.jsonl", [
        {"id": f"q{i}", "prompt": f"question {i} ", "rejected": f"kind answer {i}",
         "chosen": f"the fox {i}" if i % 2 else f"a lazy dog {i}"} for i in range(12)])
    r = runner.invoke(app, ["diagnose", "--model", env.m0, "--train", train, "--bad",
                            bad, "--judge", "fox", "--no-robustness", "--out", str(out),
                            *(["--resume"] if resume else [])])
    assert r.exit_code == 130, r.output
    assert f"interrupted: no report was written at --out {out}" in r.output, r.output
    assert (f"{out}.features" in r.output) == resume and not out.exists()


def test_extract_under_torchrun_names_shard_and_batch_flags(env):
    out = env.root / "dist_bad"
    r = runner.invoke(app, ["extract", "--model", env.m0, "--data", env.pos, "--hook", H,
                            "--out", str(out), "--batch-size", "4", "--shard-size", "6"],
                      env={"WORLD_SIZE": "2", "RANK": "0"})
    line = _error(r)
    assert "--shard-size (6) must be a multiple of --batch-size (4)" in line, line
    assert not out.exists()


def test_seal_max_length_beyond_the_model_context_refused(env):
    out = env.root / "seal_long"
    r = runner.invoke(app, ["seal", "--model", env.m0, "--data", env.prefs, "--max-length",
                            "100000", "--out", str(out)])
    line = _error(r)
    assert "--max-length 100000 is longer than the context of --model" in line, line
    assert "128 tokens" in line and not out.exists()


@pytest.mark.parametrize("cmd", ["directions", "sweep"])
def test_permutations_beyond_the_bound_refused(env, cmd):
    out = env.root / (f"{cmd}_perm" + (".csv" if cmd == "sweep" else ""))
    r = runner.invoke(app, [cmd, "--model", env.m0, "--pos", env.pos, "--neg", env.neg,
                            "--permutations", "100000000", "--out", str(out),
                            *(["--hook", H] if cmd == "directions" else [])])
    line = _error(r)
    assert "--permutations" in line and "100000" in line, line
    assert not out.exists()  # 1e8 rounds ran for hours before


@pytest.mark.parametrize("extra, expect", [(["--k", "100000"], "--k 100000 is larger than the 12"),
                                           (["--format", "bogus"], "--format must be raw or chat")])
def test_diagnose_odd_values_refused_up_front_by_flag(env, extra, expect):
    bad = jsonl(env.root / "bad12.jsonl", [{"text": f"the quick fox {i} "} for i in range(12)])
    train = jsonl(env.root / "prefs12.jsonl", [
        {"id": f"q{i}", "prompt": f"question {i} ", "rejected": f"kind answer {i}",
         "chosen": f"the fox {i}" if i % 2 else f"a lazy dog {i}"} for i in range(12)])
    out = env.root / "diag_odd"
    r = runner.invoke(app, ["diagnose", "--model", env.m0, "--train", train, "--bad", bad,
                            "--judge", "fox", "--no-robustness", "--out", str(out), *extra])
    line = _error(r)
    assert expect in line and "[1/5]" not in r.output, r.output
    assert not out.exists()


def test_unlearn_overlap_warning_names_the_record_ids(env):
    """The retain/forget overlap warning named list positions ('0', '1') instead of the
    records' ids; the CLI now passes Items carrying the JSONL ids."""
    forget = jsonl(env.root / "forget_ids.jsonl", [
        {"id": f"keepf{i}", "prompt": f"Q{i}?", "response": f" bad answer {i}"} for i in range(3)])
    retain = jsonl(env.root / "retain_ids.jsonl", [
        {"id": f"r{i}", "prompt": f"Q{i}?", "response": f" bad answer {i}"} for i in range(2)]
        + [{"id": "r-other", "prompt": "Other?", "response": " fine"}])
    out = env.root / "unlearned_ids"
    r = runner.invoke(app, ["edit", "unlearn", "--model", env.m0, "--forget", forget,
                            "--retain", retain, "--objective", "ga", "--steps", "1",
                            "--repair-steps", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if "also in the forget set" in ln]
    assert warn and "'r0'" in warn[0] and "'r1'" in warn[0] and "'0'" not in warn[0], r.output
