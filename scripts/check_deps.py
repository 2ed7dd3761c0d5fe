"""Print the installed versions and run the fast-path self-checks on the tiny toy world.

Installs nothing. Exits 1 when a fast path disagrees with its reference path (the library
would then fall back to the slower reference path with a warning), 0 otherwise.

    python scripts/check_deps.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import sys

import torch

from mechunlearn.selfcheck import check_fast_paths
from mechunlearn.toyworld import load
from mechunlearn.versions import versions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None, help="toy-world cache (default: the library's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for k, v in versions().items():
        print(f"{k:18s} {v}")
    world = load("tiny", cache_dir=args.cache_dir)
    prompts = [p.prompt for v in world.eval.values() for p in v][:16]
    from mechunlearn.toyworld.format import encode_prompts

    res = check_fast_paths(world.model, encode_prompts(world.tokenizer, prompts), 16)
    bad = 0
    for key, r in res.items():
        ok = r["ok"] and r["tokens_equal"] is not False
        bad += not ok
        print(f"{key:40s} {'ok' if ok else 'MISMATCH'}  (tokens equal: {r['tokens_equal']})")
    if bad:
        print(f"{bad} fast path(s) disagree with their reference; install the versions in "
              "constraints.txt.", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
