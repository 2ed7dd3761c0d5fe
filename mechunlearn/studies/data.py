"""The user's inputs to ``diagnose``, normalised: training pairs, bad cases, plain prompts and
ground-truth ids, from JSONL paths (:mod:`mechunlearn.data`) or Python lists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechunlearn.data import DataFileError, read_jsonl
from mechunlearn.errors import ConfigError, EmptyDataError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TrainPair:
    """One training sample: the prompt, the response tuning reinforced (``chosen``) and, for
    preference data, the one it discouraged (``rejected``, else ``None``)."""

    id: str
    prompt: str
    chosen: str
    rejected: str | None = None


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) and not isinstance(x, bytes)


def load_train(train: PathLike | Sequence[Any]) -> list[TrainPair]:
    """Training samples from a JSONL path (``prompt``/``chosen``/``rejected`` or
    ``prompt``/``response`` records) or a list of such objects / tuples ``(p, c, r)`` /
    ``(p, r)`` / :class:`TrainPair`."""
    if _is_path(train):
        recs = read_jsonl(train)
        if recs.kind == "text":
            raise DataFileError(f"{train}: training data needs prompt/chosen/rejected or "
                                "prompt/response records, not 'text'.")
        return [TrainPair(i, *it) for i, it in zip(recs.ids, recs.items)]
    if len(train) == 0:
        raise EmptyDataError("The training set is empty.")
    out = []
    for i, x in enumerate(train):
        if isinstance(x, TrainPair):
            out.append(x)
        elif all(hasattr(x, a) for a in ("prompt", "chosen", "rejected")):
            out.append(TrainPair(str(getattr(x, "id", i)), x.prompt, x.chosen, x.rejected))
        elif isinstance(x, (tuple, list)) and len(x) in (2, 3) and all(isinstance(s, str) for s in x):
            out.append(TrainPair(str(i), *x))
        else:
            raise ConfigError(f"Training item {i} is {x!r:.80}; expected (prompt, chosen, "
                              "rejected), (prompt, response) or an object with those fields.")
    if len({p.id for p in out}) != len(out):
        raise ConfigError("Training sample ids are not unique.")
    return out


def load_bad(bad: PathLike | Sequence[Any]) -> tuple[list[str], list[str | None]]:
    """Bad cases as ``(prompts, responses)``; a response is ``None`` where only the prompt was
    given (``text`` records or plain strings: the model's greedy answer is judged)."""
    if _is_path(bad):
        recs = read_jsonl(bad)
        if recs.kind == "triple":
            raise DataFileError(f"{bad}: bad cases are 'text' (prompt only) or "
                                "prompt/response records, not preference triples.")
        items = recs.items
    else:
        items = list(bad)
    if not items:
        raise EmptyDataError("No bad cases given.")
    prompts: list[str] = []
    responses: list[str | None] = []
    for i, x in enumerate(items):
        if isinstance(x, str):
            prompts.append(x)
            responses.append(None)
        elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(s, str) for s in x):
            prompts.append(x[0])
            responses.append(x[1])
        else:
            raise ConfigError(f"Bad case {i} is {x!r:.80}; expected a prompt str or a "
                              "(prompt, response) pair.")
    return prompts, responses


def load_prompts(data: PathLike | Sequence[Any], what: str) -> list[str]:
    """Prompts from ``text`` records / strings, or the prompts of pair records."""
    items = read_jsonl(data).items if _is_path(data) else list(data)
    if not items:
        raise EmptyDataError(f"No {what} prompts given.")
    return [x if isinstance(x, str) else x[0] for x in items]


def load_texts(data: PathLike | Sequence[Any]) -> list[Any]:
    """Texts or (prompt, response) pairs (a contrast side), from a path or a list."""
    items = read_jsonl(data).items if _is_path(data) else list(data)
    if not items:
        raise EmptyDataError("A contrast file holds no records.")
    return [x if isinstance(x, str) else (x[0], x[1]) for x in items]


def load_truth(truth: PathLike | Sequence[str], train: Sequence[TrainPair]) -> list[str]:
    """Ground-truth ids (one per line in a text file, or a list), all present in ``train``."""
    if _is_path(truth):
        p = Path(truth)
        if not p.is_file():
            raise DataFileError(f"Ground-truth file {p} does not exist.")
        ids = [s.strip() for s in p.read_text().splitlines() if s.strip()]
    else:
        ids = [str(s) for s in truth]
    if not ids:
        where = f"Ground-truth file {truth}" if _is_path(truth) else "The ground-truth id list"
        raise EmptyDataError(f"{where} holds no id: give one training id per line (the "
                             "planted/known bad samples), or leave the truth out.")
    known = {p.id for p in train}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ConfigError(f"{len(unknown)} ground-truth id(s) are not training ids (e.g. "
                          f"{unknown[:5]}); ids must match the training file's 'id' fields "
                          f"(e.g. {sorted(known)[:3]}).")
    if len(set(ids)) == len(known):
        raise ConfigError("Every training sample is marked as ground truth; AUC needs both "
                          "classes.")
    return ids
