"""A nested output that the outer output did not write is never deleted with it.

A new-user run lost a FeatureStore written into ``OUT/sub`` when ``OUT`` (an earlier
directions output) was replaced with ``--overwrite``: the outer folder counted any nested
folder with a mechunlearn manifest as its own. Now a nested folder is part of an output only
if the output's manifest lists it (``"nested"``, e.g. a sharded store's rank sub-stores) or it
is a rank sub-store of a sharded store written by the previous release (exact name, a
FeatureStore of ours). Everything else is foreign: the replacement is refused, nothing moves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from _sharded import sharded
from _tree import tree
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.directions import Directions
from mechunlearn.errors import OutputExistsError
from mechunlearn.outputs import MANIFEST, output_folder, read_manifest
from mechunlearn.sites import Site
from mechunlearn.storage.format import STORE_PATTERNS, legacy_store_files
from mechunlearn.storage.sharded import open_store
from mechunlearn.storage.store import FeatureStore

SITE = Site("blocks.0.hook_resid_post", "mean")


def directions(seed: int = 0) -> Directions:
    g = torch.Generator().manual_seed(seed)
    return Directions(torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=1),
                      site=SITE, method="mean_diff")


def user_store(path: Path) -> FeatureStore:
    """The user's own FeatureStore (API), with one shard, written beside ``path`` and moved
    there: a new output inside one of ours is refused (tests/test_output_inside.py), but one
    moved in by hand or written by an earlier release must still be kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    side = path.parent.parent / f".{path.parent.name}-{path.name}.build"
    st = FeatureStore.create(side, SITE, "fp", 8, shard_size=4)
    st.append(torch.randn(3, 8), ["a", "b", "c"])
    st.flush()
    os.rename(side, path)
    return FeatureStore.open(path)


# ------------------------------------------------------------------ the reported data loss
def test_directions_replaced_over_a_users_nested_store_is_refused(tmp_path):
    out = tmp_path / "OUT"
    directions(0).save(out)
    user_store(out / "sub")
    before = tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="sub") as e:
            directions(1).save(out, overwrite=overwrite)
        assert "featurestore" in str(e.value) and "move it" in str(e.value)
    assert tree(tmp_path) == before
    assert FeatureStore.open(out / "sub").ids == ["a", "b", "c"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from mechunlearn.models import tiny_gpt2

    folder = tmp_path_factory.mktemp("nested") / "model"
    tiny_gpt2(folder=folder)
    return folder


def test_cli_directions_overwrite_keeps_the_users_nested_store(tmp_path, model_dir):
    """The new-user repro: ``extract --out OUT/sub`` then ``directions --out OUT --overwrite``."""
    out = tmp_path / "OUT"
    directions(0).save(out)
    user_store(out / "sub")
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    pos.write_text("\n".join(json.dumps({"text": f"good {i}"}) for i in range(10)))
    neg.write_text("\n".join(json.dumps({"text": f"bad {i}"}) for i in range(10)))
    before = tree(tmp_path)
    r = CliRunner().invoke(app, ["directions", "--model", str(model_dir),
                                 "--pos", str(pos), "--neg", str(neg),
                                 "--hook", "blocks.0.hook_resid_post", "--out", str(out),
                                 "--overwrite", "--permutations", "2"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "OUT/sub" in lines[0] and "featurestore" in lines[0], r.output
    assert tree(tmp_path) == before


def test_store_replaced_over_a_users_nested_store_is_refused(tmp_path):
    from mechunlearn.features import Features
    from mechunlearn.seal.featurize import _save

    out = tmp_path / "cache"
    _save(out, Features(torch.randn(2, 8), ("x", "y"), SITE, "fp"))
    user_store(out / "mine")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="mine"):
        _save(out, Features(torch.randn(1, 8), ("z",), SITE, "fp"))
    with pytest.raises(OutputExistsError, match="mine"):
        with output_folder(out, "featurestore", patterns=STORE_PATTERNS,
                           legacy=legacy_store_files, overwrite=True):
            pytest.fail("body must not run")
    assert tree(tmp_path) == before
    # a user's store whose files match the outer store's patterns is still not the outer's
    (tmp_path / "cache2").mkdir()
    user_store(tmp_path / "cache2" / "shard_x")
    with pytest.raises(OutputExistsError, match="shard_x"):
        with output_folder(tmp_path / "cache2", "featurestore", patterns=["shard_*"]):
            pytest.fail("body must not run")


def test_a_nested_output_the_parent_wrote_is_replaced_with_it(tmp_path):
    """Outputs written inside the temporary folder are listed in the parent's files."""
    out = tmp_path / "r"
    with output_folder(out, "report") as tmp:
        user_store(tmp / "features")  # e.g. a report that keeps its feature cache
        (tmp / "report.md").write_text("r")
    with output_folder(out, "report") as tmp:
        (tmp / "report.md").write_text("r2")
    assert sorted(os.listdir(out)) == [MANIFEST, "report.md"]
    assert sorted(os.listdir(tmp_path)) == ["r"]


# ------------------------------------------------------------------ sharded stores
def test_sharded_store_lists_its_rank_sub_stores_and_is_replaced_whole(tmp_path, monkeypatch):
    s = tmp_path / "S"
    store = sharded(monkeypatch, s, SITE)
    assert store.ids == [f"id{i}" for i in range(10)]
    assert read_manifest(s)["nested"] == ["rank_00of02", "rank_01of02"]
    directions(0).save(s, overwrite=True)  # the ranks are ours: replaced with the store
    assert sorted(os.listdir(s)) == [MANIFEST, "directions.json", "directions.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["S"]


def test_sharded_store_with_user_files_inside_is_refused(tmp_path, monkeypatch):
    s = tmp_path / "S"
    sharded(monkeypatch, s, SITE)
    user_store(s / "mine")
    (s / "rank_01of02" / "notes.txt").write_text("my notes")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="mine") as e:
        directions(0).save(s, overwrite=True)
    assert "rank_01of02/notes.txt" in str(e.value)
    assert tree(tmp_path) == before


def _legacy(s: Path) -> None:
    """Make ``s`` look like the previous release's sharded store: no ``nested`` list."""
    m = json.loads((s / MANIFEST).read_text())
    m.pop("nested", None)
    (s / MANIFEST).write_text(json.dumps(m))


def test_legacy_sharded_store_ranks_are_recognised(tmp_path, monkeypatch):
    s = tmp_path / "S"
    sharded(monkeypatch, s, SITE)
    _legacy(s)
    assert open_store(s).ids == [f"id{i}" for i in range(10)]  # still readable
    # a user's store named like a rank of another world size, or not a FeatureStore: foreign
    user_store(s / "rank_02of03")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="rank_02of03"):
        directions(0).save(s, overwrite=True)
    assert tree(tmp_path) == before
    for f in sorted((s / "rank_02of03").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    (s / "rank_02of03").rmdir()
    directions(0).save(s, overwrite=True)  # the previous release's ranks are ours
    assert sorted(os.listdir(s)) == [MANIFEST, "directions.json", "directions.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["S"]


def test_legacy_sharded_store_rank_of_another_kind_is_refused(tmp_path, monkeypatch):
    s = tmp_path / "S"
    sharded(monkeypatch, s, SITE)
    _legacy(s)
    m = json.loads((s / "rank_01of02" / MANIFEST).read_text())
    (s / "rank_01of02" / MANIFEST).write_text(json.dumps({**m, "kind": "report"}))
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="rank_01of02"):
        directions(0).save(s, overwrite=True)
    assert tree(tmp_path) == before


def test_temporary_files_of_a_killed_write_are_ours(tmp_path, monkeypatch):
    """A rank killed midway (torchrun SIGTERMs the others when one dies) leaves atomic_write's
    temporary files; they are the store's own, so replacing the store still works."""
    from mechunlearn.features import Features
    from mechunlearn.seal.featurize import _save

    store = tmp_path / "store"
    user_store(store)
    (store / ".shard_000001.safetensors.k2j3h4.tmp").write_bytes(b"half a shard")
    (store / ".manifest.json.x1y2.tmp").write_text("{")
    _save(store, Features(torch.randn(1, 8), ("z",), SITE, "fp"))
    assert FeatureStore.open(store).ids == ["z"]
    assert not any(p.name.endswith(".tmp") for p in store.iterdir())
    s = tmp_path / "S"
    sharded(monkeypatch, s, SITE)
    (s / ".rank_01of02.tmp-abcd").mkdir()
    (s / ".rank_01of02.tmp-abcd" / "manifest.json").write_text("{}")
    (s / "rank_00of02" / ".shard_000009.safetensors.q.tmp").write_bytes(b"x")
    directions(0).save(s, overwrite=True)
    assert sorted(os.listdir(s)) == [MANIFEST, "directions.json", "directions.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["S", "store"]


def test_user_folder_holding_one_of_our_outputs_is_refused(tmp_path):
    proj = tmp_path / "proj"
    user_store(proj / "feats")
    (proj / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="separate mechunlearn 'featurestore'") as e:
        directions(0).save(proj, overwrite=True)
    assert "notes.txt" in str(e.value) and "move them out" in str(e.value)
    assert tree(tmp_path) == before
