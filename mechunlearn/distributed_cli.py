"""Command line of :mod:`mechunlearn.distributed` (``python -m mechunlearn.distributed ...``).

Subcommands (run each under ``torchrun --nproc_per_node=N`` for N ranks, or plain ``python``):

* ``extract --model DIR --data FILE.jsonl --site HOOK [--position mean] --out DIR``
* ``gradients --model DIR --data FILE.jsonl --site HOOK [--position response_mean] --out DIR``
* ``merge SRC DST`` (single process) -- one plain FeatureStore in global order
* ``stats STORE [--out FILE.pt]`` -- mean/covariance reduced across ranks

JSONL rows hold ``text``, or ``prompt`` + ``response`` (or ``prompt`` + ``chosen`` +
``rejected`` for ``gradients --loss dpo``), and an optional ``id`` (default: the line number).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from mechunlearn.datasets import read_jsonl

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mechunlearn.distributed",
                                 description="Data-parallel extraction under torchrun.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("extract", "gradients"):
        s = sub.add_parser(name, help=f"{name} into a sharded FeatureStore")
        s.add_argument("--model", required=True, help="Hugging Face model folder")
        s.add_argument("--data", required=True, help="JSONL file (see module doc)")
        s.add_argument("--site", required=True, help="hook name, e.g. blocks.1.hook_resid_post")
        s.add_argument("--position", default="mean" if name == "extract" else "response_mean")
        s.add_argument("--out", required=True)
        s.add_argument("--batch-size", type=int, default=32 if name == "extract" else 16)
        s.add_argument("--shard-size", type=int, default=4096)
        s.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
        s.add_argument("--limit", type=int, default=None, help="use the first N samples")
        s.add_argument("--threads", type=int, default=1, help="torch threads per rank")
        if name == "gradients":
            s.add_argument("--loss", choices=["nll", "dpo"], default="nll")
            s.add_argument("--ref-model", default=None, help="reference model folder (dpo)")
            s.add_argument("--beta", type=float, default=0.1)
    m = sub.add_parser("merge", help="write a sharded store as one FeatureStore")
    m.add_argument("src")
    m.add_argument("dst")
    st = sub.add_parser("stats", help="mean/covariance of a store, reduced across ranks")
    st.add_argument("store")
    st.add_argument("--out", default=None, help="save {'mean','cov','n'} with torch.save")
    return ap


def _position(s: str) -> Any:
    try:
        return int(s)
    except ValueError:
        return s


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from mechunlearn.distributed import (
        distributed_mean_cov,
        extract_distributed,
        gradient_features_distributed,
        process_group,
    )
    from mechunlearn.sharded_store import merge, open_store
    from mechunlearn.sites import Site

    args = _parser().parse_args(argv)
    if args.cmd == "merge":
        out = merge(args.src, args.dst)
        print(f"merged {len(out)} rows into {out.path}")
        return 0
    with process_group() as (rank, world):
        if args.cmd == "stats":
            mean, cov, n = distributed_mean_cov(open_store(args.store))
            if rank == 0:
                if args.out:
                    torch.save({"mean": mean, "cov": cov, "n": n}, args.out)
                print(f"n={n} d={mean.shape[0]} trace(cov)={float(cov.trace()):.6g}")
            return 0
        torch.set_num_threads(args.threads)
        from mechunlearn.models import load_bridge

        recs = read_jsonl(args.data)
        data, ids = recs.items, recs.ids
        if args.limit is not None:
            data, ids = data[: args.limit], ids[: args.limit]
        model = load_bridge(args.model)
        site = Site(args.site, _position(args.position))
        common = {"ids": ids, "batch_size": args.batch_size, "shard_size": args.shard_size,
                  "dtype": _DTYPES[args.dtype]}
        if args.cmd == "extract":
            store = extract_distributed(model, data, site, args.out, **common)
        else:
            ref = load_bridge(args.ref_model) if args.ref_model else None
            store = gradient_features_distributed(model, data, site, args.out, loss=args.loss,
                                                  ref_model=ref, beta=args.beta, **common)
        if rank == 0:
            print(f"{args.cmd}: {len(store)} rows x d={store.d} from {world} rank(s) -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
