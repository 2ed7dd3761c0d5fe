"""Bad cases: which (prompt, response) pairs to explain, and which prompts to verify on.

The bad prompts are split once (seeded, by distinct prompt text) into an *attribution* half
and a *held-out* half. Attribution, direction fitting, early stopping and selective
forgetting's re-checks use only the attribution half; every reported bad-response rate is
measured on the held-out half, whose prompts no step has seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.studies.format import PromptFormat
from mechunlearn.studies.judge import Judge, judge_all
from mechunlearn.studies.verify import generate


@dataclass(frozen=True)
class BadCases:
    """The queries to attribute (``prompts``/``responses``, judged bad), the held-out bad
    prompts, and counts: ``n_given`` prompts, ``n_attr_prompts`` in the attribution half,
    ``source`` ``"given"`` (responses from the file) or ``"decoded"`` (greedy answers)."""

    prompts: list[str]
    responses: list[str]
    heldout: list[str]
    n_given: int
    n_attr_prompts: int
    source: str


def split_prompts(prompts: Sequence[str], heldout_fraction: float, seed: int
                  ) -> tuple[list[int], list[int]]:
    """Row indices of the attribution and held-out halves (whole prompt texts go to one side)."""
    if not 0 < heldout_fraction < 1:
        raise ConfigError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}.")
    uniq = list(dict.fromkeys(prompts))
    if len(uniq) < 2:
        raise EmptyDataError(f"Got {len(uniq)} distinct bad prompt(s); need at least 2: one to "
                             "attribute and one never used for it, to verify edits on.")
    g = torch.Generator().manual_seed(seed)
    order = [uniq[i] for i in torch.randperm(len(uniq), generator=g).tolist()]
    n_held = min(len(uniq) - 1, max(1, round(heldout_fraction * len(uniq))))
    held = set(order[:n_held])
    attr = [i for i, p in enumerate(prompts) if p not in held]
    return attr, [i for i, p in enumerate(prompts) if p in held]


def find_bad_cases(model: Any, fmt: PromptFormat, judge: Judge, prompts: Sequence[str],
                   responses: Sequence[str | None], heldout_fraction: float = 0.5,
                   max_new_tokens: int = 32, seed: int = 0) -> BadCases:
    """Split the bad prompts, then keep the attribution half's bad (prompt, response) pairs.

    Where a response is given it is judged as is; where it is ``None`` the model's greedy
    response is judged. Only pairs the judge calls bad become queries.

    Raises:
        EmptyDataError: fewer than 2 distinct prompts, or no pair of the attribution half
            judged bad (names the judge and shows a response).
    """
    attr, held = split_prompts(list(prompts), heldout_fraction, seed)
    ap = [prompts[i] for i in attr]
    given = [responses[i] for i in attr]
    todo = [j for j, r in enumerate(given) if r is None]
    if todo:
        dec, _ = generate(model, fmt, [ap[j] for j in todo], max_new_tokens)
        for j, r in zip(todo, dec):
            given[j] = r
    resp = [str(r) for r in given]
    verdict = judge_all(judge, resp)
    keep = [j for j, v in enumerate(verdict) if v]
    if not keep:
        from mechunlearn.studies.judge import describe

        raise EmptyDataError(
            f"The judge ({describe(judge)}) called none of the {len(ap)} attribution-half "
            f"responses bad (e.g. {ap[0]!r} -> {resp[0]!r}); nothing to diagnose. Check the "
            "judge, the prompt format (--format) and that these prompts trigger the behaviour."
        )
    source = "decoded" if len(todo) == len(ap) else "given" if not todo else "given+decoded"
    return BadCases([ap[j] for j in keep], [resp[j] for j in keep],
                    [prompts[i] for i in held], len(prompts), len(ap), source)
