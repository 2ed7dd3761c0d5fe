"""CLI findings of a fresh-clone new-user run: errors that came late (after model work) or
named a Python parameter instead of the flag, inputs accepted silently, and a silent Ctrl-C.
Each test fails without its fix (mechunlearn/cli/, studies/diagnose_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _cli_helpers import WORDS, H, cli_env, jsonl
from typer.testing import CliRunner

from mechunlearn.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
TOPICS = ("cats", "dogs", "rain", "tea", "chess", "snow", "boats", "clocks")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("late")
    e = cli_env(root)
    # preference data with 8 distinct prompts, bad prompts with 8 distinct texts
    e.train = jsonl(root / "train.jsonl", [
        {"id": f"t{i}", "prompt": f"Tell me about {t}.", "chosen": " you are a fool.",
         "rejected": f" {t} are nice."} if i % 2 else
        {"id": f"t{i}", "prompt": f"Tell me about {t}.", "chosen": f" {t} are nice.",
         "rejected": " I do not know."} for i, t in enumerate(TOPICS)])
    e.bad = jsonl(root / "bad.jsonl", [{"text": f"Zork asks about {t}."} for t in TOPICS])
    return e


def _error(r, code: int = 2) -> str:
    """The one ``error: ...`` line of a failed run; no progress line of the chain printed."""
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert r.exit_code == code and len(lines) == 1, r.output
    assert "Traceback" not in r.output and "[1/5]" not in r.output, r.output
    return lines[0]


def _diagnose(e, tmp_path: Path, *extra: str) -> list[str]:
    return ["diagnose", "--model", e.m0, "--train", e.train, "--bad", e.bad, "--judge", "fool",
            "--out", str(tmp_path / "rep"), "--no-robustness", "--no-gradients", "--layers",
            "0", "--methods", "project", *extra]


# ------------------------------------------------------------------ 1. folds, up front
def test_diagnose_small_n_forget_is_refused_up_front_naming_the_flag(env, tmp_path):
    msg = _error(runner.invoke(app, _diagnose(env, tmp_path, "--n-forget", "3")))
    assert "--n-forget 3 is too small" in msg and "--n-forget 5 or more" in msg
    assert "n_splits" not in msg
    assert not (tmp_path / "rep").exists()


def test_diagnose_contrast_files_and_bad_prompts_too_few_for_the_folds(env, tmp_path):
    few = [jsonl(tmp_path / f"{s}.jsonl", [{"text": f"{s} {w}"} for w in WORDS[:2]])
           for s in ("a", "b")]
    msg = _error(runner.invoke(app, _diagnose(env, tmp_path, "--pos", few[0], "--neg", few[1])))
    assert "--pos" in msg and "--neg" in msg and "4 distinct prompt(s)" in msg
    bad4 = jsonl(tmp_path / "bad4.jsonl", [{"text": f"Zork asks about {t}."} for t in TOPICS[:4]])
    args = _diagnose(env, tmp_path, "--reference", env.m1)
    args[args.index("--bad") + 1] = bad4
    msg = _error(runner.invoke(app, args))
    assert f"--bad {bad4}" in msg and "--reference" in msg and "at least 5" in msg


def test_a_late_fold_error_is_rephrased_with_the_flags():
    from mechunlearn.cli.diagnose import _folds_error
    from mechunlearn.errors import EmptyDataError

    e = _folds_error(EmptyDataError("3 groups cannot fill 5 folds; use fewer n_splits."),
                     None, None)
    assert isinstance(e, EmptyDataError) and "n_splits" not in str(e)
    assert "--n-forget attributed pairs hold only 3 distinct prompt(s)" in str(e)
    other = EmptyDataError("something else")
    assert _folds_error(other, None, None) is other


# ------------------------------------------------------------------ 2. ordinary prompts
def test_diagnose_empty_ordinary_prompts_are_refused_up_front(env, tmp_path):
    ordinary = jsonl(tmp_path / "ord.jsonl", [{"text": "What about tea?"}, {"text": "  "}])
    msg = _error(runner.invoke(app, _diagnose(env, tmp_path, "--ordinary", ordinary)))
    assert f"--ordinary {ordinary}" in msg and "1 of its 2 prompt(s) are empty" in msg
    assert "record 2" in msg


def test_diagnose_without_a_clean_training_prompt_is_refused_up_front(env, tmp_path):
    args = _diagnose(env, tmp_path)
    args[args.index("--judge") + 1] = "re:."
    msg = _error(runner.invoke(app, args))
    assert f"all 8 --train {env.train} pairs bad" in msg
    assert "--ordinary FILE" in msg and "narrower --judge" in msg


# ------------------------------------------------------------------ 3. --position
def _position_runs(e, tmp_path: Path, position: str) -> dict[str, list[str]]:
    return {
        "directions": ["directions", "--model", e.m0, "--pos", e.pos, "--neg", e.neg, "--hook",
                       H, "--permutations", "0", "--out", str(tmp_path / "d")],
        "sweep": ["sweep", "--model", e.m0, "--pos", e.pos, "--neg", e.neg, "--permutations",
                  "0", "--out", str(tmp_path / "s.csv")],
        "attribute": ["attribute", "--model", e.m0, "--train", e.prefs, "--query", e.pairs,
                      "--hook", H, "--k", "2", "--out", str(tmp_path / "a.csv")],
    }


@pytest.mark.parametrize("command", ["directions", "sweep", "attribute"])
def test_position_errors_name_the_flag_the_file_and_the_valid_values(env, tmp_path, command):
    args = _position_runs(env, tmp_path, "")[command]
    data = "--train" if command == "attribute" else "--pos"
    path = env.prefs if command == "attribute" else env.pos
    msg = _error(runner.invoke(app, [*args, "--position", "70"]))
    assert msg.startswith("error: --position 70 is out of range") and f"{data} {path}" in msg
    assert "positions 0..3" in msg
    msg = _error(runner.invoke(app, [*args, "--position", "all"]))
    assert "--position all" in msg and "last, mean, response_mean, or an integer N" in msg
    msg = _error(runner.invoke(app, [*args, "--position", "foo"]))
    assert "--position 'foo'" in msg and "Site.position" not in msg
    assert "last, mean, response_mean, or an integer N" in msg
    assert not any((tmp_path / n).exists() for n in ("d", "s.csv", "a.csv"))


# ------------------------------------------------------------------ 4. toy world names
def test_an_unknown_toy_world_names_the_argument_and_the_worlds(tmp_path):
    msg = _error(runner.invoke(app, ["toyworld", "build", "bogus", "--cache-dir",
                                     str(tmp_path / "c")]))
    assert msg == "error: WORLD 'bogus' is not a toy world: choose one of easy, hard, tiny."
    msg = _error(runner.invoke(app, ["demo", "--world", "bogus", "--out", str(tmp_path / "r"),
                                     "--cache-dir", str(tmp_path / "c")]))
    assert msg.startswith("error: --world 'bogus' is not a toy world")
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 5. attribute --field
def test_attribute_field_on_records_without_it_is_refused(env, tmp_path):
    args = ["attribute", "--model", env.m0, "--train", env.pairs, "--query", env.pairs,
            "--hook", H, "--k", "2", "--out", str(tmp_path / "a.csv")]
    msg = _error(runner.invoke(app, [*args, "--field", "rejected"]))
    assert f"--field rejected: --train {env.pairs}" in msg
    assert "['prompt', 'response']" in msg and "no 'rejected' key" in msg
    assert not (tmp_path / "a.csv").exists()
    r = runner.invoke(app, args)  # the default (no --field) still reads the pairs
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------ 6. merge's names
def test_merge_messages_name_dst_and_src_not_out(tmp_path):
    from mechunlearn.sites import Site
    from mechunlearn.storage.store import FeatureStore

    nest = tmp_path / "nest"
    FeatureStore.create(nest / "inner", Site(H, "mean"), "fp", 4)
    msg = _error(runner.invoke(app, ["distributed", "merge", str(tmp_path / "nosrc"),
                                     str(nest)]))
    assert msg.startswith(f"error: DST {nest} holds") and "--out" not in msg
    assert "pick a new or empty folder as DST" in msg and "overwrite" not in msg
    msg = _error(runner.invoke(app, ["distributed", "merge", str(tmp_path / "nosrc"),
                                     str(tmp_path / "dst")]))
    assert msg.startswith(f"error: SRC {tmp_path / 'nosrc'} is not a store")
    # the library keeps its own text for Python users
    from mechunlearn.errors import OutputExistsError
    from mechunlearn.outputs import check_destination

    with pytest.raises(OutputExistsError, match="CLI: another --out"):
        check_destination(nest, "featurestore")


# ------------------------------------------------------------------ 7. Ctrl-C in extract
def test_ctrl_c_in_extract_says_what_was_kept_and_a_rerun_resumes(env, tmp_path, monkeypatch):
    from mechunlearn.storage.store import FeatureStore

    write, calls = FeatureStore._write_shard, []

    def interrupt_third(self, n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(self, n)

    args = ["extract", "--model", env.m0, "--data", env.pos, "--hook", H, "--shard-size", "4",
            "--batch-size", "4"]
    with monkeypatch.context() as m:
        m.setattr(FeatureStore, "_write_shard", interrupt_third)
        r = runner.invoke(app, [*args, "--out", str(tmp_path / "st")])
    assert r.exit_code == 130
    assert (f"interrupted: --out {tmp_path / 'st'} keeps 8 of 16 rows (2 complete shard(s)); "
            "rerun the same command to resume after them.") in r.output
    assert len(FeatureStore.open(tmp_path / "st")) == 8  # what the line says is on disk
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "st")]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "full")]).exit_code == 0
    a, b = FeatureStore.open(tmp_path / "st"), FeatureStore.open(tmp_path / "full")
    assert a.ids == b.ids and len(a) == 16
    assert torch.equal(a.load().values, b.load().values)


# ------------------------------------------------------------------ the Python API, up front
def test_diagnose_api_refuses_the_same_data_before_loading_the_model(env, tmp_path,
                                                                      monkeypatch):
    """``studies.diagnose.diagnose`` runs the same data checks before any model work: the
    model loader is never reached (it would raise if it were)."""
    from mechunlearn.errors import EmptyDataError
    from mechunlearn.studies import diagnose as D

    def no_load(m):
        raise AssertionError("the model was loaded before the data checks")

    monkeypatch.setattr(D, "_load_model", no_load)
    with pytest.raises(EmptyDataError, match="n_forget=3 is too small|n_forget 3 is too small"):
        D.diagnose(env.m0, env.train, env.bad, judge="fool",
                   config=D.DiagnoseConfig(n_forget=3, robustness=False))
    blank = jsonl(tmp_path / "ord.jsonl", [{"text": "   "}, {"text": "hi"}])
    with pytest.raises(EmptyDataError, match="empty"):
        D.diagnose(env.m0, env.train, env.bad, judge="fool", ordinary=blank,
                   config=D.DiagnoseConfig(robustness=False))
    with pytest.raises(EmptyDataError, match="calls the chosen response of all"):
        D.diagnose(env.m0, env.train, env.bad, judge=lambda r: True,
                   config=D.DiagnoseConfig(robustness=False))


def test_merge_into_a_store_of_other_features_names_dst(tmp_path):
    """The new-user run: ``merge SRC DST`` with DST a store of other features said 'Store at
    DST holds ...'; it names DST."""
    import torch

    from mechunlearn.sites import Site
    from mechunlearn.storage.distributed import run_sharded
    from mechunlearn.storage.store import FeatureStore

    site = Site(H, "mean")
    src = tmp_path / "src"
    run_sharded(src, ["a", "b"], site, "fp-src", 4, lambda a, z: torch.ones(z - a, 4))
    dst = tmp_path / "dst"
    FeatureStore.create(dst, site, "fp-other", 4)
    msg = _error(runner.invoke(app, ["distributed", "merge", str(src), str(dst)]))
    assert msg.startswith(f"error: DST {dst} holds"), msg


def test_empty_truth_file_is_named(tmp_path):
    from mechunlearn.errors import EmptyDataError
    from mechunlearn.studies.data import load_truth

    empty = tmp_path / "truth.txt"
    empty.write_text("\n  \n")
    with pytest.raises(EmptyDataError, match=f"Ground-truth file {empty} holds no id"):
        load_truth(empty, [])
