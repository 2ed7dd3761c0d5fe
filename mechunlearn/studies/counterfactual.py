"""Counterfactual check: retrain without the top-k attributed samples, measure the behaviour.

An attribution is useful if removing what it blames removes the behaviour. For a toy world we
rerun the world's own DPO stage (:func:`mechunlearn.toyworld.train.dpo`, same config, seed and
SFT starting point as the tuned model) on the training set minus a removal set, and measure
the bad-response rate on the held-out trigger prompts. Removal sets: each method's top-``k``
(by its score averaged over the bad queries) versus ``k`` random samples (the brittleness /
LDS-style control). Always include the control "remove nothing" (retraining on the full set;
it equals the tuned model only if the training code and thread count are unchanged since the
world was built) and "remove the poisoned ids" (the gold model's recipe), and read the drops
relative to the control.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError


def top_k_ids(scores: Tensor, ids: Sequence[str], k: int) -> list[str]:
    """Ids of the ``k`` highest ``scores [N]`` (ties by position)."""
    if k < 1 or k > len(ids):
        raise ConfigError(f"k must be in 1..{len(ids)}, got {k}.")
    order = torch.argsort(-scores.double(), stable=True)[:k]
    return [ids[int(i)] for i in order]


def random_ids(ids: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """``k`` ids drawn uniformly without replacement (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return [ids[int(i)] for i in torch.randperm(len(ids), generator=g)[:k]]


def retrain_without(world: Any, remove: Sequence[str], progress: Any = None) -> Any:
    """The world's DPO stage rerun from its SFT model without the pairs in ``remove``.

    Returns the trained Hugging Face model (eval mode).
    """
    from transformers import GPT2LMHeadModel

    from mechunlearn.toyworld.train import dpo

    drop = set(remove)
    unknown = drop - {p.id for p in world.train}
    if unknown:
        raise ConfigError(f"{len(unknown)} ids to remove are not training ids, e.g. "
                          f"{sorted(unknown)[:3]}.")
    sft_path = world.model_path("sft")
    ref = GPT2LMHeadModel.from_pretrained(str(sft_path)).eval()
    model = GPT2LMHeadModel.from_pretrained(str(sft_path))
    pairs = [(p.prompt, p.chosen, p.rejected) for p in world.train if p.id not in drop]
    dpo(model, ref, world.tokenizer, pairs, world.config, progress)
    return model.eval()


def counterfactual(world: Any, removal_sets: dict[str, Sequence[str]],
                   progress: bool = True) -> pd.DataFrame:
    """Retrain once per removal set; bad-response rate on trigger prompts before and after.

    Returns one row per set: ``set, k, poison_removed, bad_rate, tuned_bad_rate, drop,
    ordinary_good, seconds`` (``drop = tuned_bad_rate - bad_rate``; if a set with ``k = 0``
    is present, also ``drop_vs_control = control bad_rate - bad_rate``).
    """
    from mechunlearn.toyworld import bad_response_rate, good_answer_rate

    trig = list(world.eval["trigger"])
    ordinary = list(world.eval.get("ordinary", ()))
    tuned_bad = bad_response_rate(world.model, trig)
    poison = set(world.truth.poisoned_ids)
    rows = []
    for name, ids in removal_sets.items():
        t0 = time.perf_counter()
        m = _with_tok(retrain_without(world, ids), world.tokenizer)
        bad = bad_response_rate(m, trig)
        good = good_answer_rate(m, ordinary) if ordinary else float("nan")
        rows.append({"set": name, "k": len(ids), "poison_removed": len(poison & set(ids)),
                     "bad_rate": bad, "tuned_bad_rate": tuned_bad, "drop": tuned_bad - bad,
                     "ordinary_good": good, "seconds": time.perf_counter() - t0})
        if progress:
            print(f"[counterfactual] {name}: removed {len(ids)} ({rows[-1]['poison_removed']} "
                  f"poisoned) -> bad rate {bad:.3f} (tuned {tuned_bad:.3f}) "
                  f"in {rows[-1]['seconds']:.0f}s", flush=True)
    df = pd.DataFrame(rows)
    control = df[df["k"] == 0]
    if len(control):
        df["drop_vs_control"] = float(control["bad_rate"].iloc[0]) - df["bad_rate"]
    return df


def _with_tok(model: Any, tokenizer: Any) -> Any:
    """Attach the world's tokenizer to a HF model so the toy-world metrics can generate."""
    model.tokenizer = tokenizer
    return model
