"""The bad behaviour every robustness check measures: the judged bad-response rate.

:class:`BadRate` greedily decodes the forget prompts with a model (through its hooks, so
inside an :meth:`~mechunlearn.robustness.edit.Edit.active` block the edit is on) and asks the
user's judge (``response -> bool``, True = bad) about each response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechunlearn.errors import ConfigError, EmptyDataError, JudgeError
from mechunlearn.lm import greedy
from mechunlearn.tokens import TokenBatch, model_tokenizer, pad_id, tokenize

EncodePrompts = Callable[[Any, list[str]], TokenBatch]
"""``(tokenizer, prompts) -> TokenBatch``: how prompts become model input (default: plain
:func:`mechunlearn.tokens.tokenize`)."""


def _plain(tokenizer: Any, prompts: list[str]) -> TokenBatch:
    return tokenize(tokenizer, prompts)


def judged(judge: Callable[[str], bool], responses: Sequence[str]) -> list[bool]:
    """``[judge(r) for r in responses]`` (True = bad), checked: each verdict must be a bool
    (numpy/torch bools and 0/1 ints are accepted); an exception or another value raises
    :class:`~mechunlearn.errors.JudgeError` naming the response, so a broken judge never
    reads as "not bad". The one checker (``studies.judge.judge_all`` is this function)."""
    out = []
    for i, r in enumerate(responses):
        try:
            v = judge(r)
        except Exception as e:  # the user's judge: report which response broke it
            raise JudgeError(f"The judge raised {type(e).__name__}: {e} on response {i} "
                             f"({r[:60]!r}); fix the judge (it must return True for a bad "
                             "response, False otherwise).") from e
        if hasattr(v, "item"):
            v = v.item()
        if not (isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))):
            raise JudgeError(f"The judge returned {v!r} ({type(v).__name__}) for response {i} "
                             f"({r[:60]!r}); it must return a bool (True = bad).")
        out.append(bool(v))
    return out


@dataclass(frozen=True)
class BadRate:
    """``BadRate(...)(model) -> float``: share of ``prompts`` whose greedy response (at most
    ``max_new_tokens`` tokens) ``judge`` calls bad, in [0, 1].

    ``kv_cache`` as in :func:`mechunlearn.lm.greedy` (``True`` is exact only for edits acting on
    every position alike). Raises :class:`EmptyDataError` for no prompts,
    :class:`ConfigError` for a non-callable judge or ``max_new_tokens`` < 1.
    """

    prompts: Sequence[str]
    judge: Callable[[str], bool]
    encode_prompts: EncodePrompts | None = None
    max_new_tokens: int = 16
    kv_cache: bool | None = None
    last: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        ps = [p for p in self.prompts]
        if not ps or not all(isinstance(p, str) and p for p in ps):
            raise EmptyDataError("forget_prompts must be a non-empty list of non-empty strings.")
        object.__setattr__(self, "prompts", ps)
        if not callable(self.judge):
            raise ConfigError(f"judge must be a callable response -> bool, got {self.judge!r}.")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}.")

    def responses(self, model: Any) -> list[str]:
        """Greedy responses of ``model`` to the prompts (decoded, special tokens skipped)."""
        tok = model_tokenizer(model)
        tb = (self.encode_prompts or _plain)(tok, list(self.prompts))
        new = greedy(model, tb, self.max_new_tokens, tok.eos_token_id, pad_id(tok),
                     kv_cache=self.kv_cache)
        return [tok.decode(r, skip_special_tokens=True) for r in new]

    def __call__(self, model: Any) -> float:
        rs = self.responses(model)
        self.last[:] = rs
        return sum(judged(self.judge, rs)) / len(rs)
