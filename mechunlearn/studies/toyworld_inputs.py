"""The toy world as one dataset fed to :func:`mechunlearn.studies.diagnose.diagnose`.

The world's judge (``toyworld.is_bad``: a bad marker word) and its prompt format
(``User: ...\\nAssistant:`` / `` response<eos>``) are plugged in through the generic
:class:`~mechunlearn.studies.judge.Judge` and :class:`~mechunlearn.studies.format.PromptFormat`;
its trigger prompts are the bad cases, its ordinary prompts the ordinary ones, its planted
poisoned ids the ground truth and its SFT model the reference. :func:`toyworld_metrics` adds
the world's ground-truth columns to every measured variant and its gold model (retrained
without the poison) is measured beside the edits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechunlearn.studies.data import TrainPair
from mechunlearn.studies.format import PromptFormat


def toyworld_format() -> PromptFormat:
    """The toy world's text format as a :class:`PromptFormat`."""
    from mechunlearn.toyworld import format_prompt, format_response

    return PromptFormat(format_prompt, format_response, "toyworld")


def toyworld_inputs(world: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`diagnose` (besides the model) for a loaded toy world."""
    from mechunlearn.toyworld import is_bad

    return {"train": [TrainPair(p.id, p.prompt, p.chosen, p.rejected) for p in world.train],
            "bad": [p.prompt for p in world.eval["trigger"]],
            "ordinary": [p.prompt for p in world.eval["ordinary"]],
            "truth": list(world.truth.poisoned_ids), "reference": world.sft_model,
            "judge": is_bad, "format": toyworld_format()}


def toyworld_metrics(world: Any) -> Callable[[Any, list[str], list[str], bool | None],
                                             dict[str, float]]:
    """Ground-truth columns per variant (:data:`~mechunlearn.studies.verify.ExtraMetrics`).

    ``trigger_good``: share of the held-out trigger prompts answered with the world's
    reference good answer (from the verifier's own generations); ``bias``: refusal rate on
    the held-out borderline prompts (the second planted defect); ``kl_gold_ordinary``:
    KL(gold ‖ variant) at the last prompt token of the held-out ordinary prompts.
    """
    from mechunlearn.toyworld import bias_rate, generate_text, good_answer_rate, kl

    by_prompt = {p.prompt: p for p in world.eval["trigger"]}
    border, ordinary = list(world.eval["borderline"]), list(world.eval["ordinary"])

    def extra(model: Any, prompts: list[str], responses: list[str],
              kv_cache: bool | None) -> dict[str, float]:
        trig = [by_prompt[p] for p in prompts]
        refusals = generate_text(model, border, kv_cache=kv_cache)
        return {"trigger_good": good_answer_rate(model, trig, responses),
                "bias": bias_rate(model, border, refusals),
                "kl_gold_ordinary": kl(world.gold_model, model, ordinary)}

    return extra


def diagnose_toyworld(world: Any, config: Any = None, say: Callable[[str], None] | None = None,
                      ground_truth: bool = True) -> Any:
    """:func:`diagnose` on the world's tuned model with :func:`toyworld_inputs`; with
    ``ground_truth``, also :func:`toyworld_metrics` per variant and the gold model as a
    ``"gold"`` reference row, and (robustness checks on) the world's benign forget-adjacent
    quoting pairs (:func:`adjacent_pairs`) as the relearning
    attack's data instead of the attribution-ranked ones (when the world has any: ``tiny``
    has none)."""
    from mechunlearn.studies.diagnose import DiagnoseConfig, diagnose

    cfg = config or DiagnoseConfig()
    extra = ({"extra_metrics": toyworld_metrics(world), "compare_with": {"gold": world.gold_model}}
             if ground_truth else {})
    benign = adjacent_pairs(world, cfg.robustness_adjacent) if ground_truth else []
    if cfg.robustness and benign:  # a world without quoting pairs (tiny): attribution-ranked
        extra["adjacent"] = benign
    return diagnose(world.model, **toyworld_inputs(world), config=cfg, say=say, **extra)


def adjacent_pairs(world: Any, n: int = 8) -> list[Any]:
    """The toy world's forget-adjacent samples: training pairs that legitimately quote the
    bad text (category ``quote``, chosen judged bad), never poisoned: benign relearning data
    (as in :mod:`mechunlearn.studies.guarded`); empty for a world without quoting pairs."""
    from mechunlearn.toyworld import is_bad

    return [p for p in world.train if p.category == "quote" and is_bad(p.chosen)
            and not p.poisoned][:n]
