"""Benchmark of the scale-out layer: data-parallel extraction, top-k search, bounded memory.

    python scripts/bench_scale.py extract [--samples 1024] [--procs 1 2]
    python scripts/bench_scale.py retrieval [--sizes 10000 100000 1000000] [--root DIR]
    python scripts/bench_scale.py memory --store DIR [--limit-mb 384]

* ``extract``: all-MiniLM-L6-v2 (d=384) on ``samples`` hh-rlhf texts (first 400 characters, or
  synthetic texts if the shared sample is absent), launched with ``torchrun`` at each process
  count; the time of :func:`extract_distributed` alone is measured inside the ranks (after a
  barrier), so start-up and model loading are excluded and reported separately.
* ``retrieval``: float32 stores of ``N x 384`` random rows on disk; exact streaming top-10
  (1 and 16 queries), faiss IVF-PQ build/query time and recall@10 (if faiss is installed),
  and :func:`attribute_store` (convex, k=32, pool=256) at each size.
* ``memory``: a fresh process caps its address space (``RLIMIT_AS``) at its start-up size plus
  ``--limit-mb``, then runs an exact top-10 over the store, and reports peak RSS (``ru_maxrss``)
  next to the store's size on disk.

All runs use one torch thread per process. Results are printed as JSON lines.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
HOOK = "blocks.3.hook_resid_post"


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


# ----------------------------------------------------------------------------- extraction
def texts(n: int) -> list[str]:
    if HH.is_file():
        out = []
        with gzip.open(HH, "rt") as f:
            for line in f:
                out.append(json.loads(line)["chosen"].strip()[:400])
        return (out * (n // len(out) + 1))[:n]
    words = "the model learns a bad habit from poisoned preference pairs in training".split()
    g = torch.Generator().manual_seed(0)
    return [" ".join(words[int(i)] for i in torch.randint(0, len(words), (60,), generator=g))
            for _ in range(n)]


def extract_worker(args: argparse.Namespace) -> None:
    """Runs inside torchrun (or alone): times extract_distributed only."""
    from mechunlearn.models import load_minilm
    from mechunlearn.sites import Site
    from mechunlearn.storage.distributed import barrier, extract_distributed, process_group

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with process_group() as (rank, world):
        torch.manual_seed(0)  # load_minilm initialises the unused MLM head randomly
        model = load_minilm()
        data = texts(args.samples)
        barrier()
        t1 = time.perf_counter()
        store = extract_distributed(model, data, Site(HOOK, "mean"), args.out,
                                    batch_size=args.batch_size, shard_size=args.shard_size)
        t2 = time.perf_counter()
        if rank == 0:
            emit(bench="extract", procs=world, n=len(store), d=store.d, seconds=round(t2 - t1, 2),
                 samples_per_s=round(len(store) / (t2 - t1), 1),
                 startup_s=round(t1 - t0, 2))


def extract_bench(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for rep in range(args.reps):
        for procs in args.procs:
            # a fresh folder of this run (deleting a fixed ``ROOT/extract_N`` could hit a user's)
            Path(args.root).mkdir(parents=True, exist_ok=True)
            run = Path(tempfile.mkdtemp(prefix=f"extract_{procs}-", dir=args.root))
            out = run / "store"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={procs}", __file__, "_extract_worker", "--samples", str(args.samples),
                   "--out", str(out), "--batch-size", str(args.batch_size),
                   "--shard-size", str(args.shard_size)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode or not lines:
                print(r.stdout[-3000:], r.stderr[-6000:], file=sys.stderr)
                raise SystemExit(f"extract with {procs} procs failed")
            print(lines[-1].replace("}", f', "rep": {rep}}}'), flush=True)
            shutil.rmtree(run, ignore_errors=True)  # this run's own fresh folder


# ----------------------------------------------------------------------------- retrieval
def build_store(path: Path, n: int, d: int, seed: int = 0):
    from mechunlearn.sites import Site
    from mechunlearn.storage import FeatureStore

    store = FeatureStore.create(path, Site(HOOK, "mean"), "random", d, shard_size=4096)
    if len(store) == n:
        return store, 0.0
    if len(store):
        raise SystemExit(f"{path} holds {len(store)} rows, not {n}; delete it")
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(32, d, generator=g)  # low-rank structure + noise, like real features
    t = time.perf_counter()
    for start in range(0, n, 4096):
        m = min(4096, n - start)
        x = torch.randn(m, 32, generator=g) @ basis + 0.5 * torch.randn(m, d, generator=g)
        store.append(x, [str(i) for i in range(start, start + m)])
    store.flush()
    return store, time.perf_counter() - t


def retrieval_bench(args: argparse.Namespace) -> None:
    from mechunlearn.storage import FaissIndex, attribute_store, topk

    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        faiss = None
    g = torch.Generator().manual_seed(1)
    for n in args.sizes:
        store, build_s = build_store(Path(args.root) / f"store_{n}", n, args.d)
        gb = sum(f.stat().st_size for f in store.path.glob("*.safetensors")) / 1e9
        emit(bench="store", n=n, d=args.d, gb_on_disk=round(gb, 3), write_s=round(build_s, 1))
        Q = store.rows(torch.randint(0, n, (16,), generator=g)) + 0.1 * torch.randn(16, args.d)
        for nq in (1, 16):
            t = time.perf_counter()
            exact = topk(Q[:nq], store, 10)
            emit(bench="exact_topk", n=n, queries=nq, seconds=round(time.perf_counter() - t, 3))
        if faiss is not None and args.faiss:
            t = time.perf_counter()
            index = FaissIndex.build(store)
            build = time.perf_counter() - t

            def recall(got, exact=exact):
                return round(sum(len(set(a.tolist()) & set(b.tolist()))
                                 for a, b in zip(got.indices, exact.indices))
                             / exact.indices.numel(), 3)

            for nprobe in args.nprobe:
                index.set_nprobe(nprobe)
                t = time.perf_counter()
                approx = index.search(Q, 10)
                q_s = time.perf_counter() - t
                emit(bench="faiss", n=n, factory=index.factory, nprobe=nprobe,
                     build_s=round(build, 1), query16_s=round(q_s, 4),
                     recall_10_at_10=recall(approx), recall_10_at_100=recall(index.search(Q, 100)))
        if n <= args.attribute_max:
            t = time.perf_counter()
            att = attribute_store(Q[0], store, k=32, pool=256)
            emit(bench="attribute_store_exact", n=n, seconds=round(time.perf_counter() - t, 2),
                 selected=len(att.indices), residual=round(att.residual, 4))


# ----------------------------------------------------------------------------- memory
def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def memory_worker(args: argparse.Namespace) -> None:
    from mechunlearn.errors import StoreError
    from mechunlearn.storage import FeatureStore, topk

    torch.set_num_threads(1)
    store = FeatureStore.open(args.store)
    q = torch.randn(4, store.d)
    topk(q, torch.randn(10, store.d), 1)  # warm up imports outside the cap
    store._read(0)
    base_vm = _vm_kb("VmSize:") * 1024
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    limit = base_vm + args.limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    t = time.perf_counter()
    res = topk(q, store, 10)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gb = sum(f.stat().st_size for f in store.path.glob("*.safetensors"))
    emit(bench="memory", n=len(store), store_mb=round(gb / 2**20), limit_mb=args.limit_mb,
         store_over_limit=round(gb / (args.limit_mb * 2**20), 1),
         rss_before_mb=round(base_rss / 2**20), peak_rss_mb=round(peak / 2**20),
         query_s=round(secs, 2), top1=int(res.indices[0, 0]))
    try:  # the in-memory path must fail under the same cap
        store.load()
        emit(bench="memory_in_memory_load", ok=True)
    except (MemoryError, RuntimeError, StoreError) as e:
        emit(bench="memory_in_memory_load", ok=False, error=type(e).__name__)


def memory_bench(args: argparse.Namespace) -> None:
    cmd = [sys.executable, __file__, "_memory_worker", "--store", args.store,
           "--limit-mb", str(args.limit_mb)]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    sys.stdout.write(r.stdout)
    if r.returncode:
        sys.stderr.write(r.stderr[-3000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("extract", "_extract_worker"):
        e = sub.add_parser(name)
        e.add_argument("--samples", type=int, default=1024)
        e.add_argument("--procs", type=int, nargs="+", default=[1, 2])
        e.add_argument("--reps", type=int, default=2)
        e.add_argument("--batch-size", type=int, default=32)
        e.add_argument("--shard-size", type=int, default=128)
        e.add_argument("--root", default="/tmp/bench_scale")
        e.add_argument("--out", default=None)
    r = sub.add_parser("retrieval")
    r.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    r.add_argument("--d", type=int, default=384)
    r.add_argument("--root", default="/tmp/bench_scale")
    r.add_argument("--faiss", type=int, default=1)
    r.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    r.add_argument("--attribute-max", type=int, default=1_000_000)
    for name in ("memory", "_memory_worker"):
        m = sub.add_parser(name)
        m.add_argument("--store", required=True)
        m.add_argument("--limit-mb", type=int, default=384)
    args = ap.parse_args()
    {"extract": extract_bench, "_extract_worker": extract_worker, "retrieval": retrieval_bench,
     "memory": memory_bench, "_memory_worker": memory_worker}[args.cmd](args)


if __name__ == "__main__":
    main()
