"""Unlearning edits with an attributed forget set and default settings, against a gold
retrain timed in the same run (issue 20: gap closed, trigger/ordinary good answers, KL to
gold, time ratio).

    python scripts/fast_unlearning.py --seed 0 --out docs      # one world seed per run
    python scripts/fast_unlearning.py --seed 1 --out docs
    python scripts/fast_unlearning.py --plot --out docs         # curves from the CSVs

Per seed: load the cached ``hard`` world, run the diagnose chain exactly as ``mechunlearn
demo`` does (bad cases -> attribution -> forget set -> ``unlearn``, ``selective``, ``u2a``
with default settings, measured on held-out prompts), then retrain the gold model (SFT +
DPO on the pairs without the poison, the world's own recipe) in the same process, so both
times are measured side by side (wall seconds, and the process's CPU seconds, which depend
less on the machine's load). Columns: ``seconds`` / ``cpu_seconds`` = the edit (the call
that produces the edited model, its own stop checks and decodes included); the held-out
measurement that follows it (which the gold model gets too, outside its retrain time) is
``measure_seconds`` / ``measure_cpu_seconds``; ``attribution_seconds`` (wall) = the chain's
attribution sweep, shared by the three edits and needed to find the forget set at all (the
gold retrain instead assumes an oracle forget set). Time ratios use the edit alone.
The chain's robustness checks (on by default in ``DiagnoseConfig``) are off here: they attack
every variant after its measurement (docs/robustness.md). The chain's ``selective`` call
passes ``forget_ok`` = the complement of its ``retain_ok`` (attributed pairs whose chosen
response the judge accepts are not unlearned), the chain's forget set as its first round's
attribution (``first_attribution``: not attributed twice) and the ``unlearn`` variant's retain
sample (``retain_rows``), so its first round is the ``unlearn`` edit.
Writes ``<out>/unlearning_fast_hard_s<seed>.csv``;
``--plot`` draws KL to gold (x the tuned model's) against the gap closed, one point per
variant and seed, to ``<out>/unlearning_fast_hard.png``.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import torch

TARGETS = "gap >= 0.95, trigger good >= 0.9x gold, ordinary good >= 0.98x tuned, KL <= 1.2x tuned, time <= 0.1x gold retrain"


def gold_retrain_seconds(world) -> tuple[float, float]:
    """Wall and CPU seconds of the gold model's DPO retrain (the world's build recipe)."""
    from transformers import GPT2LMHeadModel

    from mechunlearn.toyworld.train import dpo, new_model

    t0, c0 = time.perf_counter(), time.process_time()
    sft = GPT2LMHeadModel.from_pretrained(str(world.model_path("sft")))  # plain HF, as built
    sft.eval()
    m = new_model(world.config, world.tokenizer)
    m.load_state_dict(sft.state_dict())
    pairs = [(p.prompt, p.chosen, p.rejected) for p in world.train if not p.poisoned]
    dpo(m, sft, world.tokenizer, pairs, world.config)
    return time.perf_counter() - t0, time.process_time() - c0


def _loadavg() -> str:
    """The 1/5/15-minute load averages (Linux), or "" where unknown."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def run(seed: int, out: str) -> None:
    from mechunlearn import toyworld
    from mechunlearn.atomic import atomic_write
    from mechunlearn.studies.demo import against_gold
    from mechunlearn.studies.diagnose import DiagnoseConfig
    from mechunlearn.studies.toyworld_inputs import diagnose_toyworld

    wc = toyworld.PRESETS["hard"].replace(seed=seed) if seed else toyworld.PRESETS["hard"]
    w = toyworld.load(wc, progress=False)
    t0 = time.perf_counter()
    res = diagnose_toyworld(w, DiagnoseConfig(methods=("unlearn", "selective", "u2a"),
                                                   robustness=False),
                            say=lambda s: print(f"[s{seed}] {s}", flush=True))
    t_diag = time.perf_counter() - t0
    print(res.edits[["variant", "bad_rate_heldout", "trigger_good", "good_rate_ordinary",
                     "kl_gold_ordinary", "seconds", "detail"]].to_string(), flush=True)
    gold_s, gold_cpu = gold_retrain_seconds(w)
    e = against_gold(w, res.edits)
    e.loc[e.variant == "gold", "seconds"] = gold_s
    e.loc[e.variant == "gold", "cpu_seconds"] = gold_cpu
    e["seconds_vs_gold_retrain"] = e["seconds"] / gold_s
    e["cpu_vs_gold_retrain"] = e["cpu_seconds"] / gold_cpu
    by = e.set_index("variant")
    e["trigger_good_vs_gold"] = e["trigger_good"] / by.loc["gold", "trigger_good"]
    e["ordinary_good_vs_tuned"] = e["good_rate_ordinary"] / by.loc["unedited", "good_rate_ordinary"]
    e["kl_gold_vs_tuned"] = e["kl_gold_ordinary"] / by.loc["unedited", "kl_gold_ordinary"]
    e["meets_targets"] = ((e.gap_closed >= 0.95) & (e.trigger_good_vs_gold >= 0.9)
                          & (e.ordinary_good_vs_tuned >= 0.98) & (e.kl_gold_vs_tuned <= 1.2)
                          & (e.cpu_vs_gold_retrain <= 0.1))
    e["seed"] = seed
    e["attribution_seconds"] = res.timings.get("attribution", float("nan"))
    e.loc[e.variant == "gold", ["measure_seconds", "measure_cpu_seconds"]] = float("nan")
    e["n_forget"] = res.info["n_forget"]
    e["n_forget_poisoned"] = int(res.top[res.top.chosen_judged_bad].in_truth.sum())
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"unlearning_fast_hard_s{seed}.csv")
    atomic_write(path, lambda p: e.to_csv(p, index=False))
    cols = ["variant", "bad_rate_heldout", "gap_closed", "trigger_good", "good_rate_ordinary",
            "kl_gold_ordinary", "kl_gold_vs_tuned", "seconds", "seconds_vs_gold_retrain",
            "cpu_seconds", "cpu_vs_gold_retrain", "measure_cpu_seconds",
            "meets_targets", "detail"]
    print(e[cols].to_string())
    print(f"seed {seed}: diagnose {t_diag:.0f} s (attribution {e.attribution_seconds.iloc[0]:.0f} s), "
          f"gold retrain {gold_s:.0f} s wall / {gold_cpu:.0f} s CPU, forget {e.n_forget.iloc[0]} pairs "
          f"({e.n_forget_poisoned.iloc[0]} poisoned); load now {_loadavg()}; "
          f"targets: {TARGETS}; wrote {path}")


def plot(out: str) -> None:
    """KL to gold (x tuned) vs gap closed, one point per variant and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from mechunlearn.plots import save_figure

    files = sorted(glob.glob(os.path.join(out, "unlearning_fast_hard_s*.csv")))
    if not files:
        raise SystemExit(f"no unlearning_fast_hard_s*.csv in {out}: run with --seed first")
    df = pd.concat([pd.read_csv(f) for f in files])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    marks = {0: "o", 1: "s", 2: "^", 3: "D"}
    for i, (v, g) in enumerate(df.groupby("variant", sort=False)):
        for _, r in g.iterrows():
            ax.scatter(r.gap_closed, r.kl_gold_vs_tuned, marker=marks.get(int(r.seed), "x"),
                       color=f"C{i}", label=v if r.seed == g.seed.min() else None)
    ax.axhline(1.2, ls=":", color="0.5")
    ax.axvline(0.95, ls=":", color="0.5")
    ax.set_xlabel("bad-response gap closed (held-out trigger prompts)")
    ax.set_ylabel("KL(gold || model), ordinary prompts, x tuned's")
    ax.set_title("hard world, attributed forget set, default settings "
                 f"(seeds {sorted(df.seed.unique().tolist())}: o=0, s=1, ^=2, D=3)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "unlearning_fast_hard.png")
    save_figure(fig, path, close=True)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world seed (0: the preset)")
    ap.add_argument("--plot", action="store_true", help="only draw the plot from the CSVs")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.plot:
        plot(args.out)
    else:
        run(args.seed, args.out)


if __name__ == "__main__":
    main()
