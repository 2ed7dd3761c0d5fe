"""Ship a built toy world inside the package (``mechunlearn/toyworld/embedded/<hash>/``).

    python scripts/embed_world.py --world hard [--seed 0]

Builds (trains, with ``embedded=False``) or reuses the verified cache of the world, then
copies its models, data and build timings with a sha256 list and the versions they were
trained under. Size of the default ``hard`` world: ~12 MB.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="hard")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mechunlearn.toyworld.config import resolve_config
    from mechunlearn.toyworld.embedded import embed
    from mechunlearn.toyworld.world import _measured_with, build

    cfg = resolve_config(args.world)
    if args.seed is not None:
        cfg = cfg.replace(seed=args.seed)
    folder = build(cfg, embedded=False)
    print(embed(folder, cfg, _measured_with()))


if __name__ == "__main__":
    main()
