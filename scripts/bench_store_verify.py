"""Cost of checking every shard's sha256 on read (FeatureStore.open(check_reads=True)).

Writes a store of ``--shards`` x 4096 rows x d float32 to a temp folder, then times a bare
``iter_shards`` pass and a streamed ``mean_cov`` with and without the read-time check (best
of ``--repeats``; the store is in the page cache after the first pass).

    python scripts/bench_store_verify.py --shards 25 --d 768
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from mechunlearn.sites import Site
from mechunlearn.storage import FeatureStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=25)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        st = FeatureStore.create(tmp, Site("blocks.0.hook_resid_post"), "bench", a.d)
        g = torch.Generator().manual_seed(0)
        for s in range(a.shards):
            st.append(torch.randn(4096, a.d, generator=g), [f"{s}-{i}" for i in range(4096)])
        mb = a.shards * 4096 * a.d * 4 / 2**20
        print(f"store: {a.shards} shards x 4096 x {a.d} float32 = {mb:.0f} MB")
        for what in ("iter_shards", "mean_cov"):
            for check in (False, True):
                best = float("inf")
                for _ in range(a.repeats):
                    store = FeatureStore.open(tmp, check_reads=check)
                    t = time.perf_counter()
                    if what == "iter_shards":
                        for _v, _i in store.iter_shards():
                            pass
                    else:
                        store.mean_cov()
                    best = min(best, time.perf_counter() - t)
                print(f"{what:12s} check_reads={check!s:5s} {best:6.2f} s  ({mb / best:5.0f} MB/s)")


if __name__ == "__main__":
    main()
