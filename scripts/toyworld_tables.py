"""Print docs/toyworld.md's "Measured figures" tables from cached toy-world builds.

Usage: ``python scripts/toyworld_tables.py [tiny easy hard] [--cache-dir DIR]``. Builds a
preset first if it is not cached (``toyworld.load``); reads ``metrics.json`` and
``timings.json`` from each build folder and prints Markdown (rates of the SFT, tuned and
gold models; RepSim AUC by layer and position; build time by stage; cache size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechunlearn import toyworld


def _size(folder: Path) -> str:
    n = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{n / 2**20:.1f} MiB"


def tables(preset: str, cache_dir: str | None) -> str:
    """Markdown for one preset (builds it if needed)."""
    w = toyworld.load(preset, cache_dir=cache_dir, progress=True)
    m, t, c = w.metrics, w.timings, w.config
    lines = [f"### `{preset}` ({c.n_pairs} pairs, {len(w.truth.poisoned_ids)} poisoned, "
             f"{c.n_layer} layers, d_model {c.d_model}; hash `{c.hash()}`; cache "
             f"{_size(w.path)})", ""]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in t.items())
    lines += [f"Build time (s, 1 thread): {stages}; total {sum(t.values()):.0f}.", ""]
    keys = sorted(k for k in m["tuned"] if isinstance(m["tuned"][k], (int, float)))
    lines += ["| metric | SFT | tuned | gold |", "|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(f"{m[n].get(k, float('nan')):.3f}"
                                       for n in ("sft", "tuned", "gold")) + " |" for k in keys]
    rs = m["repsim_auc"]
    positions = sorted({k.split("@")[1] for k in rs}, reverse=True)
    lines += ["", f"RepSim AUC for the poisoned ids (mean over {m['n_repsim_queries']} bad "
              "eval queries; features of prompt + chosen):", "",
              "| layer | " + " | ".join(positions) + " |",
              "|---|" + "---|" * len(positions)]
    for layer in range(c.n_layer):
        lines.append(f"| {layer} | " + " | ".join(
            f"{rs[f'blocks.{layer}.hook_resid_post@{p}']:.3f}" for p in positions) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=["tiny", "easy", "hard"])
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args()
    for p in a.presets:
        print(tables(p, a.cache_dir))


if __name__ == "__main__":
    main()
