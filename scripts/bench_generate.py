"""Benchmark greedy generation: KV-cache decoding vs re-running the whole sequence.

    python scripts/bench_generate.py [--world hard] [--repeats 3] [--threads 1]

Side by side in one run, on every held-out eval prompt of the world (32 new tokens):
  * no hook: the default (KV cache on the wrapped HF model) vs ``kv_cache=False``;
  * a ``Project`` edit at every position of one layer: ``kv_cache=True`` (through the
    bridge) vs the default for hooked models (full recompute).
Prints the median seconds of each, their ratio, and whether the generated texts are equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, repeats: int) -> tuple[float, list[str]]:
    out, ts = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main() -> None:
    from mechunlearn import toyworld
    from mechunlearn.interventions import Project, apply
    from mechunlearn.sites import Site
    from mechunlearn.toyworld import metrics as M

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="hard")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layer", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    w = toyworld.load(a.world, progress=False)
    ps = [p for v in w.eval.values() for p in v]
    print(f"world {a.world} ({w.config.hash()}), {len(ps)} prompts, 32 new tokens, "
          f"{a.threads} thread(s), median of {a.repeats}")
    fast, tf = _time(lambda: M.generate(w.model, ps), a.repeats)
    slow, ts = _time(lambda: M.generate(w.model, ps, kv_cache=False), a.repeats)
    print(f"no hook:   kv cache {fast:.2f} s | full recompute {slow:.2f} s | ratio "
          f"{slow / fast:.1f}x | same texts: {tf == ts}")
    d = torch.randn(w.config.d_model, generator=torch.Generator().manual_seed(0))
    with apply(w.model, Project(d, site=Site(f"blocks.{a.layer}.hook_resid_post"))):
        fast, tf = _time(lambda: M.generate(w.model, ps, kv_cache=True), a.repeats)
        slow, ts = _time(lambda: M.generate(w.model, ps), a.repeats)
    plain = M.generate(w.model, ps)
    print(f"Project at layer {a.layer}: kv cache {fast:.2f} s | full recompute {slow:.2f} s | "
          f"ratio {slow / fast:.1f}x | same texts: {tf == ts} "
          f"(the edit changed {sum(x != y for x, y in zip(tf, plain))} of {len(ps)} answers)")


if __name__ == "__main__":
    main()
