"""A user's folder inside one of our outputs, even an empty one, is never deleted.

New-user run: ``mkdir report/my_notes`` then the same command with ``--overwrite`` deleted
``my_notes`` (replacing an output removed every empty folder left in it). Manifests now list
the folders the library made (``dirs``), empty ones included (a report without figures keeps
an empty ``figures/``), and a replacement finding any other folder is refused, naming it.
Manifests of the previous release list no folders: only the folders its kind always made
(a report's ``figures`` and ``data``) and folders holding its listed files count as ours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from _tree import tree
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.directions import Directions
from mechunlearn.errors import OutputExistsError
from mechunlearn.outputs import MANIFEST, _delete_ours, output_folder, read_manifest
from mechunlearn.ownership import foreign
from mechunlearn.report import Report
from mechunlearn.sites import Site
from mechunlearn.storage.distributed import SHARDED_PATTERNS
from mechunlearn.storage.format import STORE_PATTERNS, legacy_store_files
from mechunlearn.storage.store import FeatureStore

SITE = Site("blocks.0.hook_resid_post", "mean")


def report(path: Path, figures: bool = False, overwrite: bool = False) -> Path:
    """A report with a table and (optionally) a figure: without one, ``figures/`` is empty."""
    r = Report("t")
    r.add_table("tab", pd.DataFrame({"a": [1.0, 2.0]}))
    if figures:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1])
        r.add_figure("fig", fig)
    return r.write(path, overwrite=overwrite)


def directions(seed: int = 0) -> Directions:
    g = torch.Generator().manual_seed(seed)
    return Directions(torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=1),
                      site=SITE, method="mean_diff")


def as_previous_release(folder: Path) -> None:
    """Make ``folder``'s manifest look like the previous release's: no ``dirs`` list."""
    m = json.loads((folder / MANIFEST).read_text())
    m.pop("dirs", None)
    (folder / MANIFEST).write_text(json.dumps(m))


# ------------------------------------------------------------------ manifests list our folders
def test_manifest_lists_every_folder_we_made_empty_ones_too(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "report") as tmp:
        (tmp / "a" / "b").mkdir(parents=True)
        (tmp / "c").mkdir()
        (tmp / "c" / "x.csv").write_text("1")
    assert read_manifest(out)["dirs"] == ["a", "a/b", "c"]
    report(tmp_path / "rep")
    m = read_manifest(tmp_path / "rep")
    assert m["dirs"] == ["data", "figures"] and not any((tmp_path / "rep" / "figures").iterdir())


def test_our_outputs_with_empty_folders_are_replaced(tmp_path):
    rep = tmp_path / "rep"
    report(rep)  # empty figures/
    report(rep, figures=True)
    assert sorted(os.listdir(rep / "figures")) == ["fig.png"]
    report(rep)  # figures/ empty again: the old fig.png and nothing else went
    assert os.listdir(rep / "figures") == [] and sorted(os.listdir(tmp_path)) == ["rep"]
    with output_folder(tmp_path / "o", "x") as tmp:
        (tmp / "deep" / "er").mkdir(parents=True)
    directions(0).save(tmp_path / "o", overwrite=True)  # another kind: --overwrite replaces it
    assert sorted(os.listdir(tmp_path / "o")) == [MANIFEST, "directions.json",
                                                  "directions.safetensors"]


# ------------------------------------------------------------------ the reported data loss
@pytest.mark.parametrize("where", ["my_notes", "figures/mine", "data/a/b"])
def test_users_empty_folder_blocks_the_replacement(tmp_path, where):
    rep = tmp_path / "rep"
    report(rep)
    (rep / where).mkdir(parents=True)
    before = tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError) as e:
            report(rep, overwrite=overwrite)
        shown = where if where != "data/a/b" else "data/a"  # the outermost user folder
        assert f"({shown}/)" in str(e.value) and "folders mechunlearn did not write" in str(e.value)
        assert "move those folders away" in str(e.value)
        assert "earlier mechunlearn" not in str(e.value)
    assert tree(tmp_path) == before
    (rep / where).rmdir()
    if where == "data/a/b":
        (rep / "data" / "a").rmdir()
    report(rep, figures=True)  # the user's folder gone: replaced as before
    assert (rep / "figures" / "fig.png").is_file()


def test_users_folder_with_files_and_an_empty_one_are_both_named(tmp_path):
    rep = tmp_path / "rep"
    report(rep)
    (rep / "notes").mkdir()
    (rep / "notes" / "n.md").write_text("mine")
    (rep / "empty").mkdir()
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match=r"files and folders .*\(empty/, notes/n.md\)"):
        report(rep, overwrite=True)
    assert tree(tmp_path) == before


def test_user_folder_holding_only_an_empty_folder_is_refused(tmp_path):
    """Not ours at all (no manifest): ``overwrite`` used to replace it, deleting ``empty/``."""
    out = tmp_path / "out"
    (out / "empty").mkdir(parents=True)
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match=r"\(empty/\)"):
        directions(0).save(out, overwrite=True)
    assert tree(tmp_path) == before


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from mechunlearn.models import tiny_gpt2

    folder = tmp_path_factory.mktemp("dirs") / "model"
    tiny_gpt2(folder=folder)
    return folder


def test_cli_overwrite_keeps_the_users_empty_folder(tmp_path, model_dir):
    """The new-user repro: ``directions --out OUT``, ``mkdir OUT/my_notes``, again with
    ``--overwrite``: one-line error naming the folder, ``my_notes`` still there."""
    pos, neg, out = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl", tmp_path / "OUT"
    pos.write_text("\n".join(json.dumps({"text": f"good {i}"}) for i in range(10)))
    neg.write_text("\n".join(json.dumps({"text": f"bad {i}"}) for i in range(10)))
    args = ["directions", "--model", str(model_dir), "--pos", str(pos), "--neg", str(neg),
            "--hook", "blocks.0.hook_resid_post", "--out", str(out), "--permutations", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (out / "my_notes").mkdir()
    before = tree(tmp_path)
    r = CliRunner().invoke(app, [*args, "--overwrite"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: ") and "my_notes/" in lines[0], r.output
    assert tree(tmp_path) == before and (out / "my_notes").is_dir()


# ------------------------------------------------------------------ the previous release
def test_previous_release_report_with_its_empty_folders_is_replaced(tmp_path):
    rep = tmp_path / "rep"
    report(rep)
    as_previous_release(rep)
    assert foreign(rep) == ("report", [])  # figures/ and data/: what every old report made
    report(rep, figures=True)
    assert read_manifest(rep)["dirs"] == ["data", "figures"]
    assert (rep / "figures" / "fig.png").is_file()


def test_previous_release_output_with_an_unknown_empty_folder_is_refused(tmp_path):
    rep = tmp_path / "rep"
    report(rep)
    as_previous_release(rep)
    (rep / "my_notes").mkdir()
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError) as e:
        report(rep, overwrite=True)
    msg = str(e.value)
    assert "my_notes/" in msg and "earlier mechunlearn" in msg and "delete it by hand" in msg
    assert str(rep / "my_notes") in msg
    assert tree(tmp_path) == before
    # a kind that never made a folder: an empty folder in it is the user's too
    out = tmp_path / "d"
    directions(0).save(out)
    as_previous_release(out)
    (out / "figures").mkdir()
    with pytest.raises(OutputExistsError, match="earlier mechunlearn"):
        directions(1).save(out)
    assert (out / "figures").is_dir()


def test_store_from_before_manifests_with_an_empty_user_folder_is_refused(tmp_path):
    st = FeatureStore.create(tmp_path / "s", SITE, "fp", 8, shard_size=4)
    st.append(torch.randn(3, 8), ["a", "b", "c"])
    st.flush()
    (tmp_path / "s" / MANIFEST).unlink()  # as written before output manifests existed
    assert foreign(tmp_path / "s", legacy_store_files) == ("legacy", [])
    (tmp_path / "s" / "mine").mkdir()
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="mine/.*earlier mechunlearn"):
        with output_folder(tmp_path / "s", "featurestore", patterns=STORE_PATTERNS,
                           legacy=legacy_store_files):
            pytest.fail("body must not run")
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ folders of patterns, races
def test_folders_of_a_pattern_are_ours(tmp_path):
    """A rank killed before its sub-store moved into place leaves an empty temporary folder
    ``.rank_01of02.tmp-*`` in a sharded store: the store's pattern covers it."""
    s = tmp_path / "S"
    with output_folder(s, "sharded-store", patterns=SHARDED_PATTERNS) as tmp:
        (tmp / "manifest.json").write_text("{}")
    (s / ".rank_01of02.tmp-abcd").mkdir()
    assert foreign(s) == ("sharded-store", [])
    (s / "rank_tmp").mkdir()  # not the pattern's folder
    assert foreign(s) == ("sharded-store", ["rank_tmp/"])


def test_delete_keeps_a_user_folder_that_appeared_after_the_check(tmp_path):
    rep = tmp_path / "rep"
    report(rep, figures=True)
    (rep / "figures" / "later").mkdir()
    with pytest.warns(UserWarning, match="kept them"):
        _delete_ours(rep, None)
    assert sorted(str(p.relative_to(rep)) for p in rep.rglob("*")) == ["figures",
                                                                       "figures/later"]
