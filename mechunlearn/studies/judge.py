"""Judges: "is this response bad?" as a callable ``response -> bool``.

Any Python callable with that signature is a judge (a classifier, a reward-model threshold,
a human label lookup). The CLI builds one from a string with :func:`parse_judge`:

* ``"fool,idiot"`` -> :class:`KeywordJudge` (case-insensitive whole-word match of any keyword);
* ``"re:\\bfool(s)?\\b"`` -> :class:`RegexJudge` (Python regex, case-insensitive search).

:func:`judge_all` calls a judge on many responses and turns its failures into
:class:`JudgeError` naming the response, so a broken judge never reads as "not bad".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mechunlearn.errors import (
    ConfigError,
    JudgeError,  # noqa: F401 (defined in errors.py, kept importable here)
    )

Judge = Callable[[str], bool]



@dataclass(frozen=True)
class KeywordJudge:
    """Bad if the response contains any of ``keywords`` as whole words (case-insensitive)."""

    keywords: tuple[str, ...]

    def __post_init__(self) -> None:
        kws = tuple(k.strip() for k in self.keywords if k.strip())
        if not kws:
            raise ConfigError("KeywordJudge needs at least one non-empty keyword.")
        object.__setattr__(self, "keywords", kws)
        object.__setattr__(self, "_re", re.compile(
            r"(?<!\w)(?:" + "|".join(re.escape(k) for k in kws) + r")(?!\w)", re.IGNORECASE))

    def __call__(self, response: str) -> bool:
        return bool(self._re.search(response))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return "keywords " + ", ".join(repr(k) for k in self.keywords)


@dataclass(frozen=True)
class RegexJudge:
    """Bad if ``pattern`` (a Python regex) is found in the response (case-insensitive)."""

    pattern: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_re", re.compile(self.pattern, re.IGNORECASE))
        except re.error as e:
            raise ConfigError(f"Judge regex {self.pattern!r} does not compile: {e}.") from e
        if self._re.search(""):  # type: ignore[attr-defined]
            raise ConfigError(f"Judge regex {self.pattern!r} matches the empty string, so it "
                              "would call every response bad; make it specific.")

    def __call__(self, response: str) -> bool:
        return bool(self._re.search(response))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"regex {self.pattern!r}"


def parse_judge(spec: str) -> Judge:
    """``"re:<regex>"`` -> :class:`RegexJudge`; otherwise comma-separated keywords."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--judge needs keywords (e.g. 'fool,idiot') or 're:<regex>'.")
    if spec.startswith("re:"):
        return RegexJudge(spec[3:])
    return KeywordJudge(tuple(spec.split(",")))


def judge_all(judge: Judge, responses: Sequence[str]) -> list[bool]:
    """``[judge(r) for r in responses]``, checked: each verdict must be a bool (numpy/torch
    bools and 0/1 ints are accepted); an exception or another value raises
    :class:`JudgeError` naming the response (:func:`mechunlearn.robustness.behaviour.judged`)."""
    from mechunlearn.robustness.behaviour import judged

    return judged(judge, responses)


def describe(judge: Judge) -> str:
    """A one-line description of a judge for reports."""
    if isinstance(judge, (KeywordJudge, RegexJudge)):
        return str(judge)
    return getattr(judge, "__name__", type(judge).__name__)
