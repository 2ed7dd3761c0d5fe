"""A new output inside one of our outputs is refused before anything is written.

New-user run: ``diagnose --out d1`` then ``diagnose --out d1/figures/x`` succeeded, and only a
later ``diagnose --out d1 --resume`` (or any replacement of ``d1``) was refused because ``d1``
now held a separate output. ``check_destination`` (so ``output_folder``, every store and
every CLI ``--out`` check) now refuses a destination below a folder holding our manifest,
except the nested outputs that output lists as its own (a sharded store's rank sub-stores),
and an output already there (it is replaced in place, nothing new is nested).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from _cli_helpers import WORDS, H, jsonl
from _sharded import sharded
from _tree import tree
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.directions import Directions
from mechunlearn.errors import MechUnlearnError, OutputPathError
from mechunlearn.outputs import MANIFEST, check_destination, output_folder, read_manifest
from mechunlearn.ownership import enclosing
from mechunlearn.report import Report
from mechunlearn.sites import Site
from mechunlearn.storage.store import FeatureStore

SITE = Site("blocks.0.hook_resid_post", "mean")
runner = CliRunner()


def report(path: Path) -> Path:
    r = Report("t")
    r.add_table("tab", pd.DataFrame({"a": [1.0, 2.0]}))
    r.write(path)  # makes an empty figures/ (listed in the manifest's dirs)
    return path


def store(path: Path) -> FeatureStore:
    st = FeatureStore.create(path, SITE, "fp", 8, shard_size=4)
    st.append(torch.randn(3, 8), ["a", "b", "c"])
    st.flush()
    return st


def directions() -> Directions:
    return Directions(torch.nn.functional.normalize(torch.randn(1, 8), dim=1), site=SITE,
                      method="mean_diff")


@pytest.mark.parametrize("rel", ["figures/x", "figures", "x", "data/a/b"])
def test_an_output_inside_an_output_is_refused_and_nothing_is_written(tmp_path, rel):
    d1 = report(tmp_path / "d1")
    before = tree(tmp_path)
    dest = d1 / rel
    for write in (lambda: store(dest), lambda: directions().save(dest),
                  lambda: report(dest), lambda: check_destination(dest, "report")):
        with pytest.raises(OutputPathError) as e:
            write()
        msg = str(e.value)
        assert isinstance(e.value, MechUnlearnError)
        assert str(dest) in msg and f"inside {d1}, a mechunlearn 'report' output" in msg
        assert f"Pick a folder outside {d1}" in msg
    with pytest.raises(OutputPathError):
        with output_folder(dest, "report"):
            pytest.fail("body must not run")
    assert tree(tmp_path) == before
    report(d1)  # d1 can still be replaced: nothing separate was written into it


def test_the_nearest_output_is_named_and_a_symlinked_path_is_resolved(tmp_path):
    d1 = report(tmp_path / "d1")
    (tmp_path / "link").symlink_to(d1 / "figures")
    with pytest.raises(OutputPathError, match="inside .*d1, a mechunlearn 'report'"):
        check_destination(tmp_path / "link" / "x", "report")
    s = store(tmp_path / "s").path
    assert enclosing((s / "a" / "b").resolve()) == (s.resolve(), "featurestore")
    assert enclosing((tmp_path / "elsewhere").resolve()) is None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from mechunlearn.models import tiny_gpt2

    root = tmp_path_factory.mktemp("inside")
    tiny_gpt2(folder=root / "m")
    jsonl(root / "pos.jsonl", [{"text": f"the quick {w} jumps"} for w in WORDS * 2])
    jsonl(root / "neg.jsonl", [{"text": f"a lazy {w} sleeps"} for w in WORDS * 2])
    return root


def test_cli_out_inside_an_output_is_one_line_and_writes_nothing(folder, tmp_path):
    d1 = report(tmp_path / "d1")
    before = tree(tmp_path)
    m, pos, neg = str(folder / "m"), str(folder / "pos.jsonl"), str(folder / "neg.jsonl")
    for cmd in (["directions", "--model", m, "--pos", pos, "--neg", neg, "--hook", H,
                 "--permutations", "0"],
                ["extract", "--model", m, "--data", pos, "--hook", H],
                ["diagnose", "--model", m, "--train", pos, "--bad", pos, "--judge", "fox"]):
        r = runner.invoke(app, [*cmd, "--out", str(d1 / "figures" / "x")])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
        assert lines[0].startswith("error: ") and "'report' output" in lines[0], r.output
        assert str(d1 / "figures" / "x") in lines[0] and "outside" in lines[0]
    assert tree(tmp_path) == before
    r = runner.invoke(app, ["directions", "--model", m, "--pos", pos, "--neg", neg, "--hook",
                            H, "--permutations", "0", "--out", str(tmp_path / "d2")])
    assert r.exit_code == 0, r.output  # beside it: fine


# ------------------------------------------------------------------ legitimate nesting
def test_sharded_store_writes_its_listed_rank_sub_stores(tmp_path, monkeypatch):
    s = tmp_path / "S"
    assert sharded(monkeypatch, s, SITE).ids == [f"id{i}" for i in range(10)]
    assert read_manifest(s)["nested"] == ["rank_00of02", "rank_01of02"]
    assert enclosing((s / "rank_01of02").resolve()) is None  # listed: the store's own
    with pytest.raises(OutputPathError, match="'sharded-store' output"):
        store(s / "mine")  # not listed
    with pytest.raises(OutputPathError, match="rank_00of02, a mechunlearn 'featurestore'"):
        store(s / "rank_00of02" / "x")  # inside a rank sub-store


def test_previous_release_sharded_store_may_still_write_its_ranks(tmp_path, monkeypatch):
    s = tmp_path / "S"
    sharded(monkeypatch, s, SITE)
    m = json.loads((s / MANIFEST).read_text())
    m.pop("nested")
    (s / MANIFEST).write_text(json.dumps(m))  # the previous release listed no nested outputs
    for name in ("rank_00of02", "rank_01of02"):
        assert enclosing((s / name).resolve()) is None
    for name in ("rank_02of02", "rank_00of03", "rank_0of02", "ranks"):
        assert enclosing((s / name).resolve()) == (s.resolve(), "sharded-store")


def test_an_output_already_inside_another_is_replaced_in_place(tmp_path):
    """Made before this rule (or moved in by hand): replacing it nests nothing new."""
    d1 = report(tmp_path / "d1")
    os.rename(store(tmp_path / "st").path, d1 / "st")
    assert FeatureStore.create(d1 / "st", SITE, "fp", 8).ids == ["a", "b", "c"]  # resumed
    directions().save(tmp_path / "dd")
    os.rename(tmp_path / "dd", d1 / "dd")
    directions().save(d1 / "dd")  # replaced where it is
    assert read_manifest(d1 / "dd")["kind"] == "directions"


def test_caches_and_plain_folders_holding_outputs_still_work(tmp_path):
    """Siblings (diagnose --resume's ``OUT.features``), a cache root holding stores (the SEAL
    cache, the toy-world cache root), a report inside its plain cache folder (demo)."""
    d1 = report(tmp_path / "d1")
    store(tmp_path / "d1.features" / "train-x")  # CLI diagnose's resume cache: beside d1
    cache = tmp_path / "cache"
    store(cache / "fp" / "site-a")
    store(cache / "fp" / "site-b")
    report(cache / "report")
    with output_folder(tmp_path / "r", "report") as tmp:
        store(tmp / "features")  # written inside the unfinished output: part of it
    assert (tmp_path / "r" / "features" / MANIFEST).is_file()
    assert read_manifest(d1)["kind"] == "report"
