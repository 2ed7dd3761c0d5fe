"""Never lose a user's files (issue 15 s.1 and s.3, issue 14 item 4).

Every test hashes the whole tmp tree before and after a refused write and asserts that nothing
changed; writes that succeed must follow the umask and carry a manifest with the versions.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from _tree import tree
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.errors import OutputExistsError, OutputPathError, StoreError
from mechunlearn.outputs import MANIFEST, output_folder, read_manifest
from mechunlearn.sites import Site

runner = CliRunner()
VERSION_KEYS = {"python", "mechunlearn", "torch", "transformers", "transformer-lens"}


def user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "important.txt").write_text("do not delete me")
    (path / "notes" / "keep.md").write_text("# mine")
    return path


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and "it/s]" not in ln]  # progress
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ----------------------------------------------------------------- the folder writer itself
def test_refuses_user_folder_even_with_overwrite(tmp_path):
    out = user_folder(tmp_path / "out")
    before = tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="important.txt"):
            with output_folder(out, "report", overwrite=overwrite) as tmp:
                (tmp / "report.md").write_text("x")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("where", [".", "..", "/", "~", "f.txt", "f.txt/sub", "link"])
def test_refuses_paths_that_can_never_be_outputs(tmp_path, monkeypatch, where):
    cwd = user_folder(tmp_path / "cwd")
    (cwd / "f.txt").write_text("a file")
    (cwd / "real").mkdir()
    (cwd / "link").symlink_to(cwd / "real")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "cwd" / "real"))
    before = tree(tmp_path)
    with pytest.raises(OutputPathError):
        with output_folder("real" if where == "~" else where, "hf-model", overwrite=True):
            pytest.fail("body must not run")
    assert tree(tmp_path) == before


def test_replaces_own_output_and_needs_overwrite_for_another_kind(tmp_path, umask022):
    out = tmp_path / "out"
    with output_folder(out, "report") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.csv").write_text("1")
        (tmp / "old.md").write_text("old")
    m = read_manifest(out)
    assert m["kind"] == "report" and VERSION_KEYS <= set(m["versions"])
    assert m["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert sorted(m["files"]) == ["old.md", "sub/a.csv"]
    with output_folder(out, "report") as tmp:  # same kind: replaced, old files gone
        (tmp / "new.md").write_text("new")
    assert sorted(os.listdir(out)) == [MANIFEST, "new.md"]
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="overwrite"):
        with output_folder(out, "hf-model") as tmp:
            (tmp / "w").write_text("w")
    assert tree(tmp_path) == before
    with output_folder(out, "hf-model", overwrite=True) as tmp:
        (tmp / "w").write_text("w")
    assert sorted(os.listdir(out)) == [MANIFEST, "w"] and read_manifest(out)["kind"] == "hf-model"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary or old siblings left


def test_user_file_added_to_our_output_is_kept(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "report") as tmp:
        (tmp / "report.md").write_text("r")
    (out / "my-notes.md").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="my-notes.md"):
        with output_folder(out, "report", overwrite=True) as tmp:
            (tmp / "report.md").write_text("r2")
    assert tree(tmp_path) == before


def test_failure_while_writing_leaves_the_old_output(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "report") as tmp:
        (tmp / "report.md").write_text("good")
    before = tree(tmp_path)
    with pytest.raises(RuntimeError):
        with output_folder(out, "report") as tmp:
            (tmp / "report.md").write_text("half")
            raise RuntimeError("crash")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("mask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                              (0o002, 0o664, 0o775)])
def test_permissions_follow_umask(tmp_path, mask, fmode, dmode):
    from mechunlearn.atomic import atomic_write_bytes

    old = os.umask(mask)
    try:
        with output_folder(tmp_path / "out", "report") as tmp:
            atomic_write_bytes(tmp / "a.bin", b"x")
            (tmp / "d").mkdir()
        atomic_write_bytes(tmp_path / "single.csv", b"y")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == dmode and mode(tmp_path / "out" / "d") == dmode
    assert mode(tmp_path / "out" / "a.bin") == fmode
    assert mode(tmp_path / "out" / MANIFEST) == fmode
    assert mode(tmp_path / "single.csv") == fmode


# ------------------------------------------------------------------ API writers
def test_export_hf_refuses_user_folder_and_records_versions(tmp_path, tiny_bridge, umask022):
    from transformers import AutoModelForCausalLM

    from mechunlearn.weights import export_hf

    out = user_folder(tmp_path / "out")
    before = tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="important.txt"):
            export_hf(tiny_bridge, out, overwrite=overwrite)
    assert tree(tmp_path) == before

    fresh = tmp_path / "model"
    export_hf(tiny_bridge, fresh)
    export_hf(tiny_bridge, fresh)  # our own previous export: replaced
    m = read_manifest(fresh)
    assert m["kind"] == "hf-model" and VERSION_KEYS <= set(m["versions"])
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o755
    assert all(stat.S_IMODE(os.stat(fresh / f).st_mode) == 0o644 for f in m["files"])
    AutoModelForCausalLM.from_pretrained(str(fresh))
    assert sorted(os.listdir(tmp_path)) == ["model", "out"]


def test_report_directions_store_writers_refuse_user_folders(tmp_path):
    from mechunlearn.directions import Directions
    from mechunlearn.report import Report
    from mechunlearn.store import FeatureStore

    out = user_folder(tmp_path / "out")
    before = tree(tmp_path)
    rep = Report("t")
    rep.add_text("hello")
    d = Directions(torch.nn.functional.normalize(torch.randn(1, 8), dim=1),
                   site=Site("blocks.0.hook_resid_post", "mean"), method="mean_diff")
    with pytest.raises(OutputExistsError):
        rep.write(out)
    with pytest.raises(OutputExistsError):
        d.save(out, overwrite=True)
    with pytest.raises(OutputExistsError):
        FeatureStore.create(out, Site("blocks.0.hook_resid_post", "mean"), "fp", 8)
    assert tree(tmp_path) == before

    path = rep.write(tmp_path / "rep")
    assert path.read_text().startswith("# t") and VERSION_KEYS <= set(read_manifest(path.parent)["versions"])
    d.save(tmp_path / "dirs")
    d.save(tmp_path / "dirs")
    assert torch.equal(Directions.load(tmp_path / "dirs").basis, d.basis)
    assert read_manifest(tmp_path / "dirs")["kind"] == "directions"
    st = FeatureStore.create(tmp_path / "store", Site("blocks.0.hook_resid_post", "mean"), "fp", 8,
                             shard_size=2)
    st.append(torch.randn(3, 8), ["a", "b", "c"])
    st.flush()
    again = FeatureStore.create(tmp_path / "store", Site("blocks.0.hook_resid_post", "mean"), "fp", 8)
    assert again.ids == ["a", "b", "c"]  # resumed, not replaced
    assert read_manifest(tmp_path / "store")["kind"] == "featurestore"


def test_seal_feature_cache_replaces_only_its_own_store(tmp_path):
    from mechunlearn.features import Features
    from mechunlearn.seal.featurize import _save
    from mechunlearn.store import FeatureStore

    site = Site("blocks.0.hook_resid_post", "mean")
    f1 = Features(torch.randn(2, 4), ("a", "b"), site, "fp")
    f2 = Features(torch.randn(3, 4), ("c", "d", "e"), site, "fp")
    _save(tmp_path / "cache", f1)
    _save(tmp_path / "cache", f2)  # a stale cache of ours: replaced
    assert FeatureStore.open(tmp_path / "cache").ids == ["c", "d", "e"]
    out = user_folder(tmp_path / "user")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError):
        _save(out, f1)
    assert tree(tmp_path) == before


def test_store_written_before_manifests_is_still_ours(tmp_path):
    """A cache store from an older mechunlearn (no .mechunlearn.json) is recognised by its
    own manifest and replaced; an extra user file in it still blocks the replacement."""
    from mechunlearn.features import Features
    from mechunlearn.outputs import MANIFEST
    from mechunlearn.seal.featurize import _save
    from mechunlearn.store import FeatureStore

    site = Site("blocks.0.hook_resid_post", "mean")
    _save(tmp_path / "c", Features(torch.randn(2, 4), ("a", "b"), site, "fp"))
    (tmp_path / "c" / MANIFEST).unlink()
    _save(tmp_path / "c", Features(torch.randn(1, 4), ("z",), site, "fp"))
    assert FeatureStore.open(tmp_path / "c").ids == ["z"]
    (tmp_path / "c" / MANIFEST).unlink()
    (tmp_path / "c" / "mine.txt").write_text("x")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="mine.txt"):
        _save(tmp_path / "c", Features(torch.randn(1, 4), ("y",), site, "fp"))
    assert tree(tmp_path) == before


def test_truncated_directions_file_is_a_typed_error(tmp_path):
    from mechunlearn.directions import Directions

    d = Directions(torch.nn.functional.normalize(torch.randn(2, 8), dim=1))
    d.save(tmp_path / "dirs")
    f = tmp_path / "dirs" / "directions.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(StoreError, match="corrupt"):
        Directions.load(tmp_path / "dirs")
    with pytest.raises(StoreError, match="not a folder"):
        Directions.load(f)


# ------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    from mechunlearn.directions import Directions
    from mechunlearn.models import tiny_gpt2

    root = tmp_path_factory.mktemp("cli")
    tiny_gpt2(folder=root / "model")
    g = torch.Generator().manual_seed(0)
    d = Directions(torch.nn.functional.normalize(torch.randn(1, 32, generator=g), dim=1),
                   site=Site("blocks.0.hook_resid_post", "mean"), method="mean_diff")
    d.save(root / "dirs")
    return root


def _ortho(cli_model, out, *extra):
    return runner.invoke(app, ["edit", "orthogonalize", "--model", str(cli_model / "model"),
                               "--directions", str(cli_model / "dirs"), "--out", str(out), *extra])


def test_cli_orthogonalize_never_deletes_user_files(tmp_path, cli_model):
    out = user_folder(tmp_path / "OUT")
    before = tree(tmp_path)
    for extra in ((), ("--overwrite",)):
        msg = one_line_error(_ortho(cli_model, out, *extra))
        assert "important.txt" in msg and "pick a new or empty folder" in msg
    assert tree(tmp_path) == before


def test_cli_out_dot_refused_in_working_directory(tmp_path, cli_model, monkeypatch):
    cwd = user_folder(tmp_path / "work")
    monkeypatch.chdir(cwd)
    before = tree(tmp_path)
    for out in (".", "..", str(cwd)):
        msg = one_line_error(_ortho(cli_model, out, "--overwrite"))
        assert "working directory" in msg
    assert tree(tmp_path) == before


def test_cli_out_under_a_regular_file(tmp_path, cli_model):
    (tmp_path / "f.txt").write_text("x")
    before = tree(tmp_path)
    msg = one_line_error(_ortho(cli_model, tmp_path / "f.txt" / "edited"))
    assert "regular file" in msg
    msg = one_line_error(_ortho(cli_model, tmp_path / "f.txt"))
    assert "existing file" in msg
    assert tree(tmp_path) == before


def test_cli_second_run_replaces_own_output(tmp_path, cli_model, umask022):
    out = tmp_path / "edited"
    assert _ortho(cli_model, out).exit_code == 0
    first = read_manifest(out)
    assert first["kind"] == "hf-model" and VERSION_KEYS <= set(first["versions"])
    r = _ortho(cli_model, out, "--overwrite")
    assert r.exit_code == 0, r.output
    r = _ortho(cli_model, out)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path)) == ["edited"]
    assert stat.S_IMODE(os.stat(out / "config.json").st_mode) == 0o644
    # a different kind of our output (saved directions) needs --overwrite
    other = tmp_path / "dirs_copy"
    from mechunlearn.directions import Directions

    Directions.load(cli_model / "dirs").save(other)
    before = tree(tmp_path)
    assert "overwrite" in one_line_error(_ortho(cli_model, other))
    assert tree(tmp_path) == before
    assert _ortho(cli_model, other, "--overwrite").exit_code == 0
    assert read_manifest(other)["kind"] == "hf-model"


def test_cli_truncated_directions_is_one_line(tmp_path, cli_model):
    import shutil

    dirs = tmp_path / "dirs"
    shutil.copytree(cli_model / "dirs", dirs)
    f = dirs / "directions.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    r = runner.invoke(app, ["edit", "orthogonalize", "--model", str(cli_model / "model"),
                            "--directions", str(dirs), "--out", str(tmp_path / "e")])
    assert "corrupt" in one_line_error(r)
    assert not (tmp_path / "e").exists()


def test_cli_data_directory_and_extract_into_user_folder(tmp_path, cli_model):
    data = tmp_path / "data"
    data.mkdir()
    r = runner.invoke(app, ["extract", "--model", str(cli_model / "model"), "--data", str(data),
                            "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "s")])
    assert "is a folder" in one_line_error(r)
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"the fox {i}"}) for i in range(3)))
    out = user_folder(tmp_path / "store")
    before = tree(tmp_path)
    r = runner.invoke(app, ["extract", "--model", str(cli_model / "model"), "--data", str(jl),
                            "--hook", "blocks.0.hook_resid_post", "--out", str(out)])
    assert "important.txt" in one_line_error(r)
    assert tree(tmp_path) == before
    r = runner.invoke(app, ["extract", "--model", str(cli_model / "model"), "--data", str(jl),
                            "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    assert VERSION_KEYS <= set(read_manifest(tmp_path / "ok")["versions"])
    r = runner.invoke(app, ["sweep", "--model", str(cli_model / "model"), "--pos", str(jl),
                            "--neg", str(jl), "--out", str(tmp_path / "ok")])
    assert "existing folder" in one_line_error(r)


def test_tiny_model_builders_never_write_into_a_user_folder(tmp_path) -> None:
    from mechunlearn.errors import OutputExistsError
    from mechunlearn.models import tiny_gpt2
    from mechunlearn.tiny_models import build_tiny

    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("notes")
    for build in (lambda: build_tiny("llama", user), lambda: tiny_gpt2(folder=user)):
        with pytest.raises(OutputExistsError, match="keep.txt"):
            build()
    assert sorted(p.name for p in user.iterdir()) == ["keep.txt"]
    assert (user / "keep.txt").read_text() == "notes"
    build_tiny("llama", tmp_path / "m")
    build_tiny("llama", tmp_path / "m", seed=1)  # our own previous output is replaced
    assert (tmp_path / "m" / "config.json").is_file()


def test_single_file_outputs_never_replace_a_user_file_silently(tmp_path) -> None:
    from mechunlearn.errors import OutputExistsError, OutputPathError
    from mechunlearn.outputs import check_output_file

    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite"):
        check_output_file(keep)
    with pytest.raises(OutputPathError, match="must end in"):
        check_output_file(tmp_path / "new.txt", suffixes=(".csv",))
    assert check_output_file(keep, overwrite=True) == keep.resolve()  # explicit opt-in
    assert check_output_file(tmp_path / "new.csv", suffixes=(".csv",)).name == "new.csv"
    assert keep.read_text() == "mine"


def test_cli_edit_never_replaces_its_own_input_model(tmp_path, cli_model):
    """A new-user run overwrote the source model in place (``--out`` == ``--model``), also
    when chaining edits (``--model e1 --out e1``)."""
    import shutil

    src = tmp_path / "m_src"
    shutil.copytree(cli_model / "model", src)
    before = tree(tmp_path)
    for out in (src, src / "sub", tmp_path):
        r = runner.invoke(app, ["edit", "orthogonalize", "--model", str(src), "--directions",
                                str(cli_model / "dirs"), "--out", str(out), "--allow-foreign",
                                "--overwrite"])
        assert r.exit_code != 0 and "Traceback" not in r.output
    assert tree(tmp_path) == before
    r = runner.invoke(app, ["edit", "orthogonalize", "--model", str(src), "--directions",
                            str(cli_model / "dirs"), "--out", str(src), "--allow-foreign"])
    msg = one_line_error(r)  # the CLI-wide guard (cli/guards.py) or edit's own check
    assert "would delete it" in msg or "would replace the model it reads" in msg
    assert tree(tmp_path) == before
