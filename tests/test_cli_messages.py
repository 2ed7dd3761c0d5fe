"""CLI messages from a new-user run (session 5, task F), each a test that fails without its fix:
repeated list values refused up front, messages that name only the options the command has,
an out-of-range --position named against the whole data, one-line warnings, options a method
ignores refused, and help text that reads as one paragraph with its defaults."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from _cli_helpers import WORDS, H, cli_env, jsonl
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    e = cli_env(root)
    # rows of 1..8 words: the first has 1 real token
    e.var = jsonl(root / "var.jsonl", [{"text": " ".join(WORDS[:i + 1]), "id": f"r{i}"}
                                        for i in range(8)])
    e.dirs = str(root / "dirs")  # a 'directions' output, fitted on m0
    r = runner.invoke(app, ["directions", "--model", e.m0, "--pos", e.pos, "--neg", e.neg,
                            "--hook", H, "--permutations", "0", "--out", e.dirs])
    assert r.exit_code == 0, r.output
    return e


def _error(r) -> str:
    """The one ``error: ...`` line; exit 2, no traceback or panel."""
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert r.exit_code == 2 and len(errors) == 1, r.output
    assert "Traceback" not in r.output and "╭" not in r.output
    return errors[0]


# ------------------------------------------------------------------ 1. repeated values
def test_list_parsers_refuse_repeats_naming_the_value():
    from mechunlearn.cli.options import split_ints, split_list

    assert split_list(" resid_post, mlp_out ", "--kinds") == ("resid_post", "mlp_out")
    assert split_ints("0,2", "--layers") == (0, 2) and split_ints("", "--layers") == ()
    with pytest.raises(ConfigError, match=r"--kinds lists 'resid_post' twice"):
        split_list("resid_post,resid_post", "--kinds")
    with pytest.raises(ConfigError, match=r"--layers lists 0 twice"):
        split_ints("0,00", "--layers")
    with pytest.raises(ConfigError, match=r"--kinds: unknown value\(s\) \['mlp'\]"):
        split_list("mlp", "--kinds", ("resid_post", "mlp_out"))
    with pytest.raises(ConfigError, match=r"--layers takes comma-separated integers"):
        split_ints("0,a", "--layers")


def test_check_layers_refuses_a_repeated_block(env):
    from mechunlearn.cli.checks import check_layers

    check_layers((0, 1), Path(env.m0))
    with pytest.raises(ConfigError, match=r"--layers lists 1 twice"):
        check_layers((1, 1), Path(env.m0))


@pytest.mark.parametrize("args,match", [
    (["doctor", "--checks", "hooks,hooks"], "--checks lists 'hooks' twice"),
    (["diagnose", "--train", "T", "--bad", "B", "--judge", "fox", "--layers", "0,0"],
     "--layers lists 0 twice"),
    (["diagnose", "--train", "T", "--bad", "B", "--judge", "fox", "--methods", "unlearn,unlearn"],
     "--methods lists 'unlearn' twice"),
    (["diagnose", "--train", "T", "--bad", "B", "--judge", "fox", "--methods", "unlearn,retrain"],
     "--methods: unknown value(s) ['retrain']"),
    (["sweep", "--pos", "P", "--neg", "N", "--kinds", "resid_post,resid_post"],
     "--kinds lists 'resid_post' twice"),
])
def test_cli_refuses_repeated_values_up_front(env, args, match):
    args = [*args, "--model", env.m0]
    if args[0] == "sweep":
        args = [env.pos if a == "P" else env.neg if a == "N" else a for a in args]
        args += ["--out", str(env.root / "never.csv")]
    if args[0] == "diagnose":
        args = [env.pairs if a == "T" else env.pos if a == "B" else a for a in args]
        args += ["--out", str(env.root / "never")]
    assert match in _error(runner.invoke(app, args))
    assert not (env.root / "never").exists() and not (env.root / "never.csv").exists()


# ------------------------------------------------------------------ 2. options it has
def test_distributed_and_extract_name_only_their_own_options(env):
    for cmd in (["distributed", "extract", "--site", H], ["extract", "--hook", H]):
        line = _error(runner.invoke(app, [*cmd, "--model", env.m0, "--data", env.pos,
                                          "--out", env.dirs]))
        assert "'directions'" in line and "--out" in line, line
        assert "--overwrite" not in line and "overwrite=True" not in line, line
    line = _error(runner.invoke(app, ["distributed", "extract", "--model", env.m0, "--data",
                                      env.prefs, "--site", H, "--out", str(env.root / "x")]))
    assert "prompt/chosen/rejected" in line and "distributed extract" in line, line
    line = _error(runner.invoke(app, ["distributed", "extract", "--model", env.m0, "--data",
                                      env.pos, "--site", H, "--out", str(env.root / "x"),
                                      "--batch-size", "48"]))
    assert "--shard-size (4096) must be a multiple of --batch-size (48)" in line, line
    line = _error(runner.invoke(app, ["distributed", "gradients", "--model", env.m0, "--data",
                                      env.prefs, "--site", H, "--out", str(env.root / "x"),
                                      "--loss", "dpo"]))
    assert "--loss dpo needs --ref-model" in line and "ref_model=" not in line, line
    assert not (env.root / "x").exists()


# ------------------------------------------------------------------ 3. --position range
@pytest.mark.parametrize("cmd", [["extract", "--hook", H],
                                 ["distributed", "extract", "--site", H]])
def test_position_out_of_range_names_the_data_and_the_valid_positions(env, cmd):
    out = env.root / f"pos-out-{cmd[0]}"
    line = _error(runner.invoke(app, [*cmd, "--model", env.m0, "--data", env.var, "--out",
                                      str(out), "--position", "3", "--batch-size", "4"]))
    assert "--position 3" in line and "var.jsonl" in line, line
    assert "3 of the 8 samples" in line and "id 'r0'" in line and "0..0" in line, line
    assert not out.exists()
    r = runner.invoke(app, [*cmd, "--model", env.m0, "--data", env.var, "--out", str(out),
                            "--position=-1", "--batch-size", "4"])
    assert r.exit_code == 0 and out.is_dir(), r.output  # every row has a last token


# ------------------------------------------------------------------ 4. one-line warnings
def test_a_warning_prints_one_line_and_the_format_is_restored(env, tmp_path):
    before = warnings.showwarning
    r = runner.invoke(app, ["edit", "orthogonalize", "--model", env.m1, "--directions",
                            env.dirs, "--allow-foreign", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    warns = [ln for ln in r.output.splitlines() if "Warning" in ln or "warnings.warn" in ln
             or "fingerprint" in ln]
    assert len(warns) == 1, r.output  # no second line quoting the source
    assert warns[0].startswith("warning: ") and warns[0].endswith("(ModelMismatchWarning)")
    assert "fingerprint" in warns[0]
    assert warnings.showwarning is before  # library users keep Python's own format


def test_toyworld_build_train_warns_when_a_build_is_cached(monkeypatch, tmp_path):
    from mechunlearn import toyworld
    from mechunlearn.toyworld import world as W

    monkeypatch.setattr(W, "check_build", lambda folder, cfg: None)  # "a valid build"
    monkeypatch.setattr(toyworld, "build", lambda *a, **k: tmp_path)
    (tmp_path / W.resolve_config("tiny").hash()).mkdir()
    r = runner.invoke(app, ["toyworld", "build", "tiny", "--train", "--cache-dir",
                            str(tmp_path)])
    assert r.exit_code == 0, r.output
    warns = [ln for ln in r.output.splitlines() if ln.startswith("warning: ")]
    assert len(warns) == 1 and "--train has no effect" in warns[0] and "--force" in warns[0]
    r = runner.invoke(app, ["toyworld", "build", "tiny", "--train", "--force",
                            "--cache-dir", str(tmp_path)])
    assert "warning" not in r.output, r.output


# ------------------------------------------------------------------ 5. ignored options
@pytest.mark.parametrize("how,extra,flag,owner", [
    ("orthogonalize", ["--steps", "10"], "--steps", "unlearn"),
    ("orthogonalize", ["--repair-steps", "0"], "--repair-steps", "unlearn"),
    ("orthogonalize", ["--objective", "npo"], "--objective", "unlearn"),
    ("orthogonalize", ["--forget", "F"], "--forget", "unlearn"),
    ("unlearn", ["--directions", "D"], "--directions", "orthogonalize"),
    ("unlearn", ["--allow-foreign"], "--allow-foreign", "orthogonalize"),
])
def test_edit_refuses_options_the_method_ignores(env, how, extra, flag, owner):
    base = (["--directions", env.dirs] if how == "orthogonalize"
            else ["--forget", env.pairs, "--retain", env.pairs])
    extra = [env.pairs if a == "F" else env.dirs if a == "D" else a for a in extra]
    out = env.root / "edit-never"
    line = _error(runner.invoke(app, ["edit", how, "--model", env.m0, "--out", str(out),
                                      *base, *extra]))
    assert f"{flag} applies to `edit {owner}` only" in line, line
    assert not out.exists()


def test_distributed_refuses_options_that_would_be_ignored(env):
    line = _error(runner.invoke(app, ["distributed", "gradients", "--model", env.m0, "--data",
                                      env.pairs, "--site", H, "--out", str(env.root / "g"),
                                      "--beta", "0.5"]))
    assert "--beta applies to `distributed gradients --loss dpo` only" in line, line
    line = _error(runner.invoke(app, ["distributed", "stats", str(env.root / "none"),
                                      "--overwrite"]))
    assert "--overwrite applies only with --out" in line, line


# ------------------------------------------------------------------ 6. help text
def test_help_paragraphs_reflow_and_name_defaults():
    wide = {"COLUMNS": "200"}
    h = runner.invoke(app, ["extract", "--help"], env=wide).output
    assert "each rank extracts its share of the data" in h and "``" not in h, h
    h = runner.invoke(app, ["distributed", "extract", "--help"], env=wide).output
    assert "real token" in h, h  # --position had no help
    assert "'prompt'+'response'" in h and "see `mechunlearn distributed --help`" not in h
    h = runner.invoke(app, ["toyworld", "build", "--help"], env=wide).output
    assert "~/.cache/mechunlearn/toyworld" in h, h
    h = runner.invoke(app, ["seal", "--help"], env=wide).output
    assert "~/.cache/mechunlearn/seal" in h and "~/.cache/..." not in h, h
    h = runner.invoke(app, ["edit", "--help"], env=wide).output
    assert "(unlearn)" in h and "(orthogonalize)" in h, h
