"""A sharded store is resumed only with the data it was started with (session 5, task I).

A new-user run wrote `distributed extract --data pos.jsonl --out ds`, then ran it again with
`--data neg.jsonl` (other texts, same length, default ids "0".."n-1"): it "resumed" and
returned the old rows, because the sharded manifest checked a hash of the ids only. Now the
manifest and every rank's sub-store record the plain store's ``data_hash``; other data, other
gradient settings, a store of the previous release (no hash), and ``merge`` into a folder
holding other rows are refused. Everything runs in-process (world size 1) on a tiny GPT-2.
"""

from __future__ import annotations

import json

import pytest
import torch
from _cli_helpers import cli_error as _error
from typer.testing import CliRunner

import mechunlearn.storage.distributed as D
from mechunlearn.cli import app
from mechunlearn.errors import StoreMismatchError
from mechunlearn.sites import Site
from mechunlearn.storage.extract import extract_to_store
from mechunlearn.storage.sharded import merge, open_store
from mechunlearn.storage.store import FeatureStore

pytestmark = pytest.mark.usefixtures("one_thread")
H = "blocks.1.hook_resid_post"
SITE = Site(H, "mean")
WORDS = "the quick brown fox jumps over lazy dog".split()
POS = [f"the quick {w} jumps high" for w in WORDS * 2]  # 16 texts
NEG = [f"a lazy {w} sleeps" for w in WORDS * 2]  # other texts, same length
KW = {"batch_size": 4, "shard_size": 4}  # 4 shards of 4 rows


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from mechunlearn.models import load_bridge, tiny_gpt2

    folder = tmp_path_factory.mktemp("resume") / "model"
    tiny_gpt2(folder=folder)
    return load_bridge(folder)


def _counting(monkeypatch, crash_after: int | None = None) -> list[int]:
    """Count the blocks run_sharded computes (the 1-row probe for ``d`` is not counted); raise
    after ``crash_after`` blocks to leave a partial store."""
    calls: list[int] = []
    real = D.extract

    def extract(model, data, site, **kw):
        if len(data) > 1:
            if crash_after is not None and len(calls) >= crash_after:
                raise RuntimeError("simulated crash")
            calls.append(len(data))
        return real(model, data, site, **kw)

    monkeypatch.setattr(D, "extract", extract)
    return calls


def test_other_data_of_the_same_length_is_refused_and_rows_kept(model, tmp_path):
    out = tmp_path / "ds"
    first = D.extract_distributed(model, POS, SITE, out, **KW).load().values
    with pytest.raises(StoreMismatchError, match="other data") as e:
        D.extract_distributed(model, NEG, SITE, out, **KW)
    assert str(out) in str(e.value) and "another" in str(e.value)
    assert torch.equal(open_store(out).load().values, first)  # nothing was mixed in
    # the same hash a plain store records for the same data, in the manifest and each rank
    plain = extract_to_store(model, POS, SITE, tmp_path / "plain", **KW)
    assert plain.data_hash is not None
    assert json.loads((out / "manifest.json").read_text())["data"] == plain.data_hash
    assert FeatureStore.open(out / "rank_00of01").data_hash == plain.data_hash
    assert torch.equal(first, plain.load().values)


def test_same_data_resumes_and_skips_finished_shards(model, tmp_path, monkeypatch):
    calls = _counting(monkeypatch, crash_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        D.extract_distributed(model, POS, SITE, tmp_path / "part", **KW)
    assert calls == [4, 4] and FeatureStore.open(tmp_path / "part" / "rank_00of01").n_shards == 2
    with pytest.raises(StoreMismatchError, match="other data"):  # a partial store too
        D.extract_distributed(model, NEG, SITE, tmp_path / "part", **KW)
    monkeypatch.undo()
    calls = _counting(monkeypatch)
    store = D.extract_distributed(model, POS, SITE, tmp_path / "part", **KW)
    assert calls == [4, 4]  # only the 2 missing shards
    ref = extract_to_store(model, POS, SITE, tmp_path / "ref", **KW).load()
    assert store.load().ids == ref.ids and torch.equal(store.load().values, ref.values)


def test_previous_release_store_without_a_hash_is_not_resumed(model, tmp_path):
    out = tmp_path / "old"
    D.extract_distributed(model, POS, SITE, out, **KW)
    for mf in (out / "manifest.json", out / "rank_00of01" / "manifest.json"):
        m = json.loads(mf.read_text())
        del m["data"]
        m.pop("config", None)
        mf.write_text(json.dumps(m))
    for data in (POS, NEG):  # even the same data: it cannot be verified
        with pytest.raises(StoreMismatchError, match="previous mechunlearn release"):
            D.extract_distributed(model, data, SITE, out, **KW)
    assert len(open_store(out)) == 16  # still readable


def test_run_sharded_checks_the_data_of_every_rank_sub_store(tmp_path):
    ids = [str(i) for i in range(8)]

    def rows(a: int, z: int) -> torch.Tensor:
        return torch.arange(a, z, dtype=torch.float32)[:, None].repeat(1, 3)

    D.run_sharded(tmp_path / "s", ids, SITE, "fp", 3, rows, shard_size=4, data="sha256:a")
    with pytest.raises(StoreMismatchError, match="other data"):
        D.run_sharded(tmp_path / "s", ids, SITE, "fp", 3, rows, shard_size=4, data="sha256:b")
    sub = tmp_path / "s" / "rank_00of01" / "manifest.json"  # a sub-store of other data
    sub.write_text(json.dumps({**json.loads(sub.read_text()), "data": "sha256:z"}))
    with pytest.raises(StoreMismatchError, match="rank_00of01 was written from other data"):
        D.run_sharded(tmp_path / "s", ids, SITE, "fp", 3, rows, shard_size=4, data="sha256:a")


def test_gradients_refuse_other_data_and_other_loss_settings(model, tmp_path):
    trip = [(f"the {w} ", " ran far", " sat down") for w in WORDS]
    other = [(p, c, " sang loud") for p, c, _ in trip]  # only the rejected responses differ
    site = Site(H, "response_mean")
    kw = {"batch_size": 4, "shard_size": 4, "loss": "dpo", "ref_model": model}
    g = D.gradient_features_distributed(model, trip, site, tmp_path / "g", beta=0.1, **kw)
    assert len(g) == 8
    with pytest.raises(StoreMismatchError, match="other data"):
        D.gradient_features_distributed(model, other, site, tmp_path / "g", beta=0.1, **kw)
    with pytest.raises(StoreMismatchError, match="config=.*'beta': 0.1"):
        D.gradient_features_distributed(model, trip, site, tmp_path / "g", beta=0.5, **kw)
    assert len(D.gradient_features_distributed(model, trip, site, tmp_path / "g", beta=0.1,
                                               **kw)) == 8  # same everything: resumes


def test_merge_never_extends_a_target_holding_other_rows(model, tmp_path):
    D.extract_distributed(model, POS, SITE, tmp_path / "pos", **KW)
    D.extract_distributed(model, NEG, SITE, tmp_path / "neg", **KW)
    m = merge(tmp_path / "pos", tmp_path / "m")
    assert m.data_hash == open_store(tmp_path / "pos").data_hash
    with pytest.raises(StoreMismatchError, match="other data"):
        merge(tmp_path / "neg", tmp_path / "m")
    assert torch.equal(FeatureStore.open(tmp_path / "m").load().values,
                       open_store(tmp_path / "pos").load().values)
    # stores without a hash (previous release): the skipped shards' values are compared
    a = FeatureStore.create(tmp_path / "a", SITE, "fp", 2, shard_size=2)
    b = FeatureStore.create(tmp_path / "b", SITE, "fp", 2, shard_size=2)
    a.append(torch.zeros(4, 2), ["0", "1", "2", "3"])
    b.append(torch.ones(4, 2), ["0", "1", "2", "3"])
    merge(a, tmp_path / "ma")
    with pytest.raises(StoreMismatchError, match="other ids or values"):
        merge(b, tmp_path / "ma")
    assert merge(a, tmp_path / "ma").n_shards == 2  # the same source resumes


def test_cli_refuses_other_data_and_merge_names_its_own_options(model, tmp_path):
    from mechunlearn.models import tiny_gpt2

    runner = CliRunner()
    tiny_gpt2(folder=tmp_path / "model")
    for name, texts in (("pos", POS), ("neg", NEG)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "ds"

    def run(data: str) -> object:
        return runner.invoke(app, ["distributed", "extract", "--model", str(tmp_path / "model"),
                                   "--data", str(tmp_path / data), "--site", H, "--out",
                                   str(out), "--batch-size", "4", "--shard-size", "8"])

    r = run("pos.jsonl")
    assert r.exit_code == 0 and "16 rows" in r.output, r.output
    line = _error(run("neg.jsonl"))
    assert "other data" in line and str(out) in line and "--out" in line, line
    assert "16 rows" not in run("neg.jsonl").output
    for dst in (out, tmp_path / "model"):  # another kind of output: no --overwrite hint
        line = _error(runner.invoke(app, ["distributed", "merge", str(out), str(dst)]))
        assert "DST" in line and "--overwrite" not in line and "overwrite=True" not in line
    assert runner.invoke(app, ["distributed", "merge", str(out), str(tmp_path / "m")]).exit_code == 0
