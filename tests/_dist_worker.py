"""torchrun worker for tests/test_distributed.py (not a test module itself).

Usage: torchrun --nproc_per_node=2 tests/_dist_worker.py OUT_DIR [MODEL DATA.jsonl]

Always (re)runs a synthetic sharded computation into OUT_DIR/syn (row i = [i, i, i, i]; run it
with MECHUNLEARN_CRASH_AFTER_SHARDS=1:1 to kill rank 1 after its first shard) and records the
blocks each rank computed in OUT_DIR/calls_<rank>.json. With a model and data it then
extracts activations into OUT_DIR/acts, gradient features into OUT_DIR/grads, reduces
statistics across ranks and saves them (rank 0) to OUT_DIR/stats.pt.
"""

from __future__ import annotations

import json
import sys

import torch

from mechunlearn.datasets import read_jsonl
from mechunlearn.distributed import (
    all_reduce_moments,
    distributed_mean_cov,
    extract_distributed,
    gradient_features_distributed,
    process_group,
    run_sharded,
)
from mechunlearn.errors import StoreMismatchError
from mechunlearn.models import load_bridge
from mechunlearn.sites import Site
from mechunlearn.store import RunningMoments

HOOK = "blocks.1.hook_resid_post"


def main() -> None:
    torch.set_num_threads(1)
    out = sys.argv[1]
    with process_group() as (rank, world):
        calls: list[int] = []

        def rows(a: int, z: int) -> torch.Tensor:
            calls.append(a)
            with open(f"{out}/calls_{rank}.json", "w") as f:
                json.dump(calls, f)
            return torch.arange(a, z, dtype=torch.float32)[:, None].repeat(1, 4)

        run_sharded(f"{out}/syn", [f"r{i}" for i in range(100)], Site(HOOK, "mean"), "syn", 4,
                    rows, shard_size=10)
        if len(sys.argv) < 4:
            return
        model_dir, data_path = sys.argv[2:4]
        recs = read_jsonl(data_path)
        data, ids = recs.items, recs.ids
        model = load_bridge(model_dir)
        acts = extract_distributed(model, data, Site(HOOK, "mean"), f"{out}/acts", ids=ids,
                                   batch_size=8, shard_size=32)
        grads = gradient_features_distributed(model, data, Site(HOOK, "response_mean"),
                                              f"{out}/grads", ids=ids, batch_size=8,
                                              shard_size=32)
        mean, cov, n = distributed_mean_cov(acts)
        # uneven per-rank data: rank r holds rows r, r + world, ... of a fixed random matrix
        x = torch.randn(37, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        rm = RunningMoments(5)
        rm.update(x[rank::world])
        tot = all_reduce_moments(rm)
        try:  # ranks that loaded different weights must be refused on every rank
            run_sharded(f"{out}/bad", ["a", "b"], Site(HOOK, "mean"), f"model{rank}", 4, rows)
            disagree = ""
        except StoreMismatchError as e:
            disagree = str(e)
        if rank == 0:
            torch.save({"mean": mean, "cov": cov, "n": n, "world": world, "rows": len(grads),
                        "x_mean": tot.mean, "x_cov": tot.cov(), "x_n": tot.n,
                        "disagree": disagree},
                       f"{out}/stats.pt")


if __name__ == "__main__":
    main()
