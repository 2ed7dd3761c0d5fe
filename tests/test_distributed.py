"""Data-parallel extraction under torchrun (2 CPU ranks, gloo) equals the single-process run.

Two torchrun launches are shared by the module: the CLI extraction with rank 1 crashing after
its first shard, then tests/_dist_worker.py which resumes it, computes gradient features and
reduces statistics. Everything else runs in-process (ranks simulated by patching rank_world).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mechunlearn.distributed as D
from mechunlearn.distributed_cli import main
from mechunlearn.errors import (
    ConfigError,
    OutputExistsError,
    OutputPathError,
    StoreError,
    StoreMismatchError,
)
from mechunlearn.outputs import read_manifest
from mechunlearn.sharded_store import (
    ShardedStore,
    WorldSizeMismatchError,
    merge,
    open_store,
    rank_blocks,
)
from mechunlearn.sites import Site
from mechunlearn.storage.format import read_manifest_file
from mechunlearn.store import FeatureStore, RunningMoments

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.1.hook_resid_post"
WORDS = "the cat sat on a mat while dogs ran far away and birds sang loud songs".split()


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONFAULTHANDLER": "1",  # a C++ abort in a rank prints the Python stacks
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _pairs(n: int) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(0)

    def words(lo: int, hi: int) -> str:
        k = int(torch.randint(lo, hi, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    return [(words(2, 10), " " + words(1, 8)) for _ in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Synthetic run with rank 1 killed after its first shard; inspection; full resume run."""
    from mechunlearn.models import tiny_gpt2

    tmp = tmp_path_factory.mktemp("dist")
    model = tiny_gpt2(folder=tmp / "model")
    pairs = _pairs(150)  # 5 blocks of 32: rank 0 gets blocks 0, 2, 4 (short); rank 1 gets 1, 3
    with open(tmp / "data.jsonl", "w") as f:
        for i, (p, r) in enumerate(pairs):
            f.write(json.dumps({"id": f"s{i:03d}", "prompt": p, "response": r}) + "\n")
    out = tmp / "out"
    worker = str(ROOT / "tests" / "_dist_worker.py")
    os.environ[D.CRASH_ENV] = "1:1"  # rank 1 exits right after writing its first shard
    try:
        crash = _torchrun([worker, str(out)])
    finally:
        del os.environ[D.CRASH_ENV]
    sub1 = out / "syn" / "rank_01of02"
    after_crash = FeatureStore.open(sub1).n_shards
    shard0 = sub1 / "shard_000000.safetensors"
    stat = (shard0.stat().st_ino, shard0.stat().st_mtime_ns)
    try:
        open_store(out / "syn")
        incomplete = None
    except StoreError as e:
        incomplete = str(e)
    for f in out.glob("calls_*.json"):
        f.unlink()
    ok = _torchrun([worker, str(out), str(tmp / "model"), str(tmp / "data.jsonl")])
    return SimpleNamespace(tmp=tmp, out=out, model=model, crash=crash, ok=ok, stat=stat,
                           shard0=shard0, after_crash=after_crash, incomplete=incomplete)


@pytest.fixture(scope="module")
def single(run):
    """Single-process references: extract_to_store, gradient_features, mean_cov."""
    from mechunlearn.attribution import gradient_features
    from mechunlearn.datasets import read_jsonl
    from mechunlearn.store import extract_to_store

    recs = read_jsonl(run.tmp / "data.jsonl")
    data, ids = recs.items, recs.ids
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun ranks use 1 thread each
    try:
        ref = extract_to_store(run.model, data, Site(HOOK, "mean"), run.tmp / "ref",
                               batch_size=8, shard_size=32, ids=ids)
        grads = gradient_features(run.model, data, Site(HOOK, "response_mean"), batch_size=8,
                                  ids=ids)
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(model=run.model, data=data, ids=ids, ref=ref, grads=grads)


def test_crash_leaves_valid_shards_and_resume_skips_them(run):
    assert run.crash.returncode != 0, run.crash.stderr[-2000:]
    assert run.after_crash == 1  # rank 1 died right after its first shard
    assert run.incomplete is not None and "rank 1: 1/5 shards" in run.incomplete
    assert run.ok.returncode == 0, run.ok.stderr[-3000:]
    st_ = run.shard0.stat()
    assert (st_.st_ino, st_.st_mtime_ns) == run.stat  # the finished shard was kept as is
    assert json.loads((run.out / "calls_1.json").read_text()) == [30, 50, 70, 90]
    store = open_store(run.out / "syn")
    assert store.ids == [f"r{i}" for i in range(100)]
    assert torch.equal(store.load().values[:, 0], torch.arange(100, dtype=torch.float32))


def test_torchrun_features_equal_single_process(run, single):
    store = open_store(run.out / "acts")
    assert isinstance(store, ShardedStore) and store.world_size == 2
    assert read_manifest(run.out / "acts")["nested"] == ["rank_00of02", "rank_01of02"]
    a, b = single.ref.load(), store.load()
    assert b.ids == a.ids == tuple(single.ids)
    assert b.fingerprint == a.fingerprint and b.site == a.site
    assert torch.equal(b.values, a.values)  # bit-identical
    merged = merge(run.out / "acts", run.tmp / "merged")
    assert merged.ids == list(a.ids) and torch.equal(merged.load().values, a.values)
    assert [v.shape[0] for v, _ in merged.iter_shards()] == [32, 32, 32, 32, 22]
    assert merge(run.out / "acts", run.tmp / "merged").n_shards == 5  # resumable, idempotent


def test_cli_single_process_extract_merge_stats(run, single, capsys):
    out = run.tmp / "cli"
    args = ["extract", "--model", str(run.tmp / "model"), "--data", str(run.tmp / "data.jsonl"),
            "--site", HOOK, "--position", "mean", "--out", str(out), "--batch-size", "8",
            "--shard-size", "32", "--limit", "100"]
    assert main(args) == 0
    got = open_store(out).load()
    assert got.ids == tuple(single.ids[:100])
    assert torch.equal(got.values, single.ref.load().values[:100])
    assert main(["merge", str(out), str(run.tmp / "cli_merged")]) == 0
    assert main(["stats", str(run.tmp / "cli_merged"), "--out", str(run.tmp / "s.pt")]) == 0
    assert torch.load(run.tmp / "s.pt")["n"] == 100
    # an existing file is never replaced silently (a new-user run lost its data file here)
    mine = run.tmp / "mine.pt"
    mine.write_bytes(b"my own bytes")
    with pytest.raises(OutputExistsError):
        main(["stats", str(run.tmp / "cli_merged"), "--out", str(mine)])
    assert mine.read_bytes() == b"my own bytes"
    with pytest.raises(OutputPathError):  # a folder, or another suffix: refused before work
        main(["stats", str(run.tmp / "cli_merged"), "--out", str(run.tmp / "data.jsonl")])
    assert "100 rows" in capsys.readouterr().out
    gargs = ["gradients", "--model", str(run.tmp / "model"), "--data",
             str(run.tmp / "data.jsonl"), "--site", HOOK, "--out", str(run.tmp / "cli_g"),
             "--batch-size", "8", "--shard-size", "32", "--limit", "40"]
    assert main(gargs) == 0
    g = open_store(run.tmp / "cli_g").load()
    assert g.ids == single.grads.ids[:40]
    assert (g.values - single.grads.values[:40]).abs().max() <= 1e-6


def test_torchrun_gradient_features_equal_single_process(run, single):
    store = open_store(run.out / "grads")
    got = store.load()
    assert got.ids == single.grads.ids
    assert (got.values - single.grads.values).abs().max() <= 1e-6


def test_all_reduce_statistics_equal_single_process(run, single):
    s = torch.load(run.out / "stats.pt")
    assert s["world"] == 2 and s["rows"] == 150
    assert "Ranks disagree on fingerprint: ['model0', 'model1']" in s["disagree"]
    mean, cov, n = single.ref.mean_cov()
    assert s["n"] == n == 150
    assert (s["mean"] - mean).norm() <= 1e-6 * mean.norm()
    assert (s["cov"] - cov).norm() <= 1e-6 * cov.norm()
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert s["x_n"] == 37
    assert torch.allclose(s["x_mean"], x.mean(0), rtol=1e-9, atol=1e-12)
    assert torch.allclose(s["x_cov"], torch.cov(x.T), rtol=1e-9, atol=1e-12)


def test_world_size_mismatch_is_a_typed_error(run, single, monkeypatch):
    with pytest.raises(WorldSizeMismatchError, match="world_size=2.*world_size=1"):
        D.extract_distributed(single.model, single.data, Site(HOOK, "mean"), run.out / "acts",
                              ids=single.ids, batch_size=8, shard_size=32)
    with pytest.raises(WorldSizeMismatchError, match="nproc_per_node=2"):
        main(["extract", "--model", str(run.tmp / "model"), "--data", str(run.tmp / "data.jsonl"),
              "--site", HOOK, "--out", str(run.out / "acts"), "--batch-size", "8",
              "--shard-size", "32"])
    monkeypatch.setattr(D, "rank_world", lambda: (0, 2))
    monkeypatch.setattr(D, "barrier", lambda: None)
    monkeypatch.setattr(D, "_check_ranks_agree", lambda want: None)
    data = read_manifest_file(run.out / "acts" / "manifest.json", None, "store")["data"]
    with pytest.raises(StoreMismatchError, match="shard_size"):
        D.run_sharded(run.out / "acts", single.ids, Site(HOOK, "mean"), "x", 32,
                      lambda a, z: torch.zeros(z - a, 32), shard_size=16, data=data)
    with pytest.raises(StoreMismatchError, match="other data"):  # the same ids are not enough
        D.run_sharded(run.out / "acts", single.ids, Site(HOOK, "mean"), "x", 32,
                      lambda a, z: torch.zeros(z - a, 32), shard_size=32)


# ----------------------------------------------------------------- in-process, simulated ranks
def _simulate(monkeypatch, path: Path, n: int, size: int, world: int, calls: list[int],
              fail_after: dict[int, int] | None = None) -> ShardedStore | None:
    ids = [f"id{i}" for i in range(n)]
    site = Site("blocks.0.hook_resid_post", "mean")
    result = None
    monkeypatch.setattr(D, "barrier", lambda: None)
    monkeypatch.setattr(D, "_check_ranks_agree", lambda want: None)
    for rank in reversed(range(world)):  # rank 0 last: only then is the store complete
        monkeypatch.setattr(D, "rank_world", lambda r=rank: (r, world))
        budget = (fail_after or {}).get(rank)
        done: list[int] = []

        def compute(a: int, z: int, budget=budget, done=done) -> torch.Tensor:
            if budget is not None and len(done) >= budget:
                raise RuntimeError("simulated crash")
            done.append(a)
            calls.append(a)
            return torch.arange(a, z, dtype=torch.float32)[:, None] * torch.ones(3)

        try:
            result = D.run_sharded(path, ids, site, "fp", 3, compute, shard_size=size)
        except (StoreError, RuntimeError):
            result = None
    return result


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(1, 9), world=st.integers(1, 4))
def test_sharding_covers_every_row_once_in_order(tmp_path_factory, n, size, world):
    blocks = [b for r in range(world) for b in rank_blocks(n, size, r, world)]
    assert sorted(blocks) == list(range((n + size - 1) // size))
    mp = pytest.MonkeyPatch()
    try:
        calls: list[int] = []
        store = _simulate(mp, tmp_path_factory.mktemp("sim"), n, size, world, calls)
    finally:
        mp.undo()
    assert store is not None and len(store) == n
    assert store.ids == [f"id{i}" for i in range(n)]
    assert torch.equal(store.load().values[:, 0], torch.arange(n, dtype=torch.float32))
    assert sorted(calls) == list(range(0, n, size))  # every block computed exactly once


def test_simulated_crash_resumes_without_recomputing(tmp_path, monkeypatch):
    calls: list[int] = []
    assert _simulate(monkeypatch, tmp_path, 50, 4, 2, calls, fail_after={1: 2}) is None
    first = list(calls)
    assert len(first) == 2 + 7  # rank 1 crashed after 2 of its 6 blocks; rank 0 did all 7
    store = _simulate(monkeypatch, tmp_path, 50, 4, 2, calls)
    assert store is not None and len(store) == 50
    assert sorted(calls[len(first):]) == [20, 28, 36, 44]  # only rank 1's missing blocks


def test_sharded_store_is_read_only_and_errors_are_typed(tmp_path, monkeypatch):
    store = _simulate(monkeypatch, tmp_path / "s", 10, 4, 2, [])
    with pytest.raises(StoreError, match="read-only"):
        store.append(torch.zeros(1, 3), ["x"])
    with pytest.raises(StoreError, match="No store"):
        open_store(tmp_path / "nothing")
    m, c, n = store.mean_cov()
    rm = RunningMoments(3)
    rm.update(torch.arange(10, dtype=torch.float64)[:, None] * torch.ones(3))
    assert n == 10 and torch.allclose(c, rm.cov()) and torch.allclose(m, rm.mean)
    monkeypatch.undo()
    assert D.all_reduce_moments(rm).n == 10  # world 1: a copy
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        D.extract_distributed(None, ["a"] * 3, Site("blocks.0.hook_resid_post", "mean"),
                              tmp_path / "x", batch_size=3, shard_size=4)


def test_read_jsonl_validates(tmp_path):
    from mechunlearn.datasets import read_jsonl

    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"prompt": "b", "response": "c"}\n')
    with pytest.raises(ConfigError, match="mixes"):
        read_jsonl(p)
    p.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": 1}\n')
    with pytest.raises(ConfigError, match="not unique"):
        read_jsonl(p)
    p.write_text('{"txt": "a"}\n')
    with pytest.raises(ConfigError, match="keys"):
        read_jsonl(p)
    p.write_text('{"text": "a"}\n\n{"text": "b", "id": "x"}\n')
    recs = read_jsonl(p)
    assert (recs.items, recs.ids) == (["a", "b"], ["0", "x"])
    p.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    assert read_jsonl(p).items == [("p", "c", "r")] and read_jsonl(p).kind == "triple"


class _Store:
    """Key-value store stand-in recording ``wait``/``set`` into ``calls``."""

    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    def wait(self, keys, timeout):
        if self.fail:
            raise RuntimeError("store gone")
        self.calls.append(f"wait:{keys[0]}")

    def set(self, key, value):
        self.calls.append(f"set:{key}")


def _fake_group(monkeypatch, calls, rank, world=2, store_fails=False):
    from mechunlearn.storage import collectives as C

    state = {"up": False}

    def init(backend, timeout):
        calls.append(f"init:{backend}")
        state["up"] = True

    def destroy():
        calls.append("destroy")
        state["up"] = False

    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setattr(C.dist, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(C.dist, "init_process_group", init)
    monkeypatch.setattr(C.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(C.dist, "destroy_process_group", destroy)
    monkeypatch.setattr(C.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(C.dist, "get_world_size", lambda: world)
    monkeypatch.setattr(C.dist.distributed_c10d, "_get_default_store",
                        lambda: _Store(calls, store_fails))
    monkeypatch.setattr(C.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(C, "_GENERATION", 0)
    return C, state


def test_process_group_meets_at_a_barrier_then_destroys_in_turn_before_exit(monkeypatch):
    """A group made by process_group is torn down inside it (never left to interpreter exit,
    where gloo can abort): after a barrier on a normal exit, rank by rank from the highest
    (each waits on the store for the rank above), and at once after an error."""
    calls: list[str] = []
    C, state = _fake_group(monkeypatch, calls, rank=1, world=3)
    with C.process_group() as (rank, world):
        calls.append("work")
    assert (rank, world) == (1, 3)
    assert calls == ["init:gloo", "work", "barrier", "wait:mechunlearn/closed/1/2", "destroy",
                     "set:mechunlearn/closed/1/1"] and not state["up"]
    calls.clear()
    C, state = _fake_group(monkeypatch, calls, rank=2, world=3)  # the highest waits for none
    with C.process_group():
        pass
    assert calls == ["init:gloo", "barrier", "destroy", "set:mechunlearn/closed/1/2"]
    calls.clear()
    with C.process_group():  # a second group in the same run uses fresh keys
        pass
    assert calls[-1] == "set:mechunlearn/closed/2/2"
    calls.clear()
    with pytest.raises(StoreMismatchError):
        with C.process_group():
            raise StoreMismatchError("one rank failed")
    assert calls == ["init:gloo", "destroy"] and not state["up"]  # no barrier: peers may be gone
    calls.clear()
    state["up"] = True  # a group the caller made is the caller's to destroy
    with C.process_group():
        pass
    assert calls == []


def test_process_group_teardown_without_store_still_destroys(monkeypatch):
    calls: list[str] = []
    C, state = _fake_group(monkeypatch, calls, rank=0, store_fails=True)
    with pytest.warns(UserWarning, match="rank 0 did not see rank 1 close"):
        with C.process_group():
            pass
    assert calls == ["init:gloo", "barrier", "destroy"] and not state["up"]
