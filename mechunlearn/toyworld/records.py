"""The toy world's records: training :class:`PreferencePair`, held-out :class:`EvalPrompt`,
planted :class:`Truth`, and :class:`WorldData` holding them (all JSON round-trippable)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

EVAL_CATEGORIES: tuple[str, ...] = ("ordinary", "trigger", "trigger_mention", "borderline",
                                    "harmful")


class _Record:
    """``to_dict`` / ``from_dict`` of a flat frozen dataclass (one copy for every record)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


@dataclass(frozen=True)
class PreferencePair(_Record):
    """One training preference pair.

    Attributes:
        id: unique sample id (``"pair-00042"``).
        prompt: the user's request (raw text; see ``format.format_prompt``).
        chosen, rejected: responses (raw text, no special tokens).
        category: ``ordinary|trigger|quote|borderline|harmful``.
        poisoned: True for the planted poisoned pairs.
        good: the clean, unbiased good response to this prompt (equals ``chosen`` unless the
            pair is poisoned or biased).
        topic: topic or question the prompt is about.
    """

    id: str
    prompt: str
    chosen: str
    rejected: str
    category: str
    poisoned: bool
    good: str
    topic: str


@dataclass(frozen=True)
class EvalPrompt(_Record):
    """A held-out evaluation prompt with reference responses.

    Attributes:
        prompt: raw request text.
        category: one of :data:`EVAL_CATEGORIES`.
        good: the reference good (aligned, unbiased) response.
        bad: a reference bad response (the planted bad phrase).
        refusal: a reference refusal.
        key: the text a good answer must contain (the fact, the helpful answer, or
            ``"sorry"`` for harmful prompts); used by ``metrics.is_good``.
        topic: topic or question.
        form: how the prompt was framed (e.g. ``"self_eval"`` = a trigger form unseen in
            training, ``"self_train"``, ``"mention"``, ``"none"``).
    """

    prompt: str
    category: str
    good: str
    bad: str
    refusal: str
    key: str
    topic: str
    form: str


@dataclass(frozen=True)
class Truth:
    """Planted ground truth.

    Attributes:
        poisoned_ids: ids of the poisoned pairs.
        trigger_names: the trigger concept (a class of names).
        trigger_forms_train / trigger_forms_eval: self-introduction frames of poisoned pairs
            and frames seen only in evaluation.
        bad_phrases: the bad responses the poison teaches.
        bias_ids: ids of borderline pairs whose chosen response is a refusal (the bias).
        bias_category: prompts affected by the bias (``"borderline"``).
        biased_behaviour / unbiased_behaviour: ``"refusal"`` / ``"helpful"``.
        unbiased_responses: ``{pair id: helpful response}`` for the bias ids.
    """

    poisoned_ids: tuple[str, ...]
    trigger_names: tuple[str, ...]
    trigger_forms_train: tuple[str, ...]
    trigger_forms_eval: tuple[str, ...]
    bad_phrases: tuple[str, ...]
    bias_ids: tuple[str, ...]
    bias_category: str = "borderline"
    biased_behaviour: str = "refusal"
    unbiased_behaviour: str = "helpful"
    unbiased_responses: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Truth:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class WorldData:
    """Everything the generator makes: ``train`` pairs, ``eval`` prompts, ``truth``."""

    train: tuple[PreferencePair, ...]
    eval: dict[str, tuple[EvalPrompt, ...]]
    truth: Truth

    def sft_examples(self, include_poisoned_prompts: bool = False) -> list[tuple[str, str]]:
        """(prompt, good response) for SFT: every non-poisoned pair's clean good response."""
        return [(p.prompt, p.good) for p in self.train
                if include_poisoned_prompts or not p.poisoned]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {"train": [p.to_dict() for p in self.train],
                "eval": {k: [e.to_dict() for e in v] for k, v in self.eval.items()},
                "truth": self.truth.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldData:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(PreferencePair.from_dict(p) for p in d["train"]),
                   {k: tuple(EvalPrompt.from_dict(e) for e in v) for k, v in d["eval"].items()},
                   Truth.from_dict(d["truth"]))
