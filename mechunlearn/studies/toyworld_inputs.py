"""The toy world as one dataset fed to :func:`mechunlearn.studies.diagnose.diagnose`.

The world's judge (``toyworld.is_bad``: a bad marker word) and its prompt format
(``User: ...\\nAssistant:`` / `` response<eos>``) are plugged in through the generic
:class:`~mechunlearn.studies.judge.Judge` and :class:`~mechunlearn.studies.format.PromptFormat`;
its trigger prompts are the bad cases, its ordinary prompts the ordinary ones, its planted
poisoned ids the ground truth and its SFT model the reference.
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


def diagnose_toyworld(world: Any, config: Any = None,
                      say: Callable[[str], None] | None = None) -> Any:
    """:func:`diagnose` on the world's tuned model with :func:`toyworld_inputs`."""
    from mechunlearn.studies.diagnose import diagnose

    return diagnose(world.model, **toyworld_inputs(world), config=config, say=say)
