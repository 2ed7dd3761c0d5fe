"""Preference data: the hh-rlhf dialogue format and plain ``{prompt, chosen, rejected}`` records.

hh-rlhf lines look like ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``.
A pair's *prompt* is every turn up to and including the final ``"\\n\\nAssistant:"``; its
*responses* are what follows that marker in ``chosen`` and ``rejected`` (leading whitespace
stripped). Files may be gzipped (detected from the magic bytes, not the name).

Malformed records (bad JSON, non-UTF-8 bytes, no Assistant turn, empty response, prompts that
differ between chosen and rejected, a truncated gzip stream) are skipped and counted in a
:class:`LoadReport` with the first offending line number, or raise
:class:`~mechunlearn.seal.errors.MalformedRecordError` under ``strict=True``. Loading never
crashes midway on bad data.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechunlearn.data import jsonl_lines
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.seal.errors import MalformedRecordError

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"


@dataclass(frozen=True)
class PreferencePair:
    """One human preference: ``chosen`` was preferred over ``rejected`` after ``prompt``.

    ``id`` is a content hash (stable across file order), made unique within a load.
    """

    prompt: str
    chosen: str
    rejected: str
    id: str = ""

    def items(self, sep: str = " ") -> tuple[tuple[str, str], tuple[str, str]]:
        """``((prompt, sep + chosen), (prompt, sep + rejected))`` for tokenization."""
        return (self.prompt, sep + self.chosen), (self.prompt, sep + self.rejected)

    def to_dict(self) -> dict[str, str]:
        """Plain record form (inverse: ``PreferencePair(**d)``)."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                "id": self.id}


@dataclass(frozen=True)
class LoadReport:
    """What a load kept and skipped.

    Attributes:
        source: path (or ``"<records>"``).
        n_lines: non-blank lines / records seen.
        n_loaded: pairs returned.
        n_skipped: records skipped.
        first_bad_line: 1-based line of the first skipped record (``None`` if none).
        reasons: ``{reason: count}``, e.g. ``{"empty_response": 4}``.
        first_error: message of the first skipped record.
    """

    source: str
    n_lines: int
    n_loaded: int
    n_skipped: int
    first_bad_line: int | None
    reasons: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dict(self.__dict__)


def content_id(prompt: str, chosen: str, rejected: str) -> str:
    """16-hex-digit sha256 of the pair's content."""
    h = hashlib.sha256("\x1f".join((prompt, chosen, rejected)).encode("utf-8"))
    return h.hexdigest()[:16]


def split_dialogue(text: str) -> tuple[str, str]:
    """Split an hh-rlhf dialogue into ``(prompt, final response)``.

    Raises :class:`MalformedRecordError` (reason ``no_assistant_turn`` or ``empty_response``).
    """
    if not isinstance(text, str):
        raise MalformedRecordError(f"dialogue must be a string, got {type(text).__name__}",
                                   reason="not_a_string")
    i = text.rfind(ASSISTANT)
    if i < 0:
        raise MalformedRecordError(
            f"no {ASSISTANT!r} turn in dialogue starting {text[:60]!r}", reason="no_assistant_turn"
        )
    prompt, response = text[: i + len(ASSISTANT)], text[i + len(ASSISTANT):].strip()
    if not response:
        raise MalformedRecordError(
            f"empty final Assistant response in dialogue ending {text[-60:]!r}",
            reason="empty_response",
        )
    return prompt, response


def parse_record(rec: Any) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` from an hh-rlhf or plain record dict."""
    if not isinstance(rec, Mapping):
        raise MalformedRecordError(f"record is {type(rec).__name__}, expected a JSON object",
                                   reason="not_an_object")
    if "prompt" in rec:
        vals = [rec.get(k) for k in ("prompt", "chosen", "rejected")]
        if not all(isinstance(v, str) for v in vals):
            raise MalformedRecordError(
                f"plain record needs string 'prompt', 'chosen', 'rejected'; got keys "
                f"{sorted(rec)}", reason="missing_field")
        prompt, chosen, rejected = vals[0], vals[1].strip(), vals[2].strip()
        if not chosen or not rejected:
            raise MalformedRecordError("empty chosen or rejected response",
                                       reason="empty_response")
        return prompt, chosen, rejected
    if "chosen" not in rec or "rejected" not in rec:
        raise MalformedRecordError(
            f"record needs 'chosen' and 'rejected' (hh-rlhf) or 'prompt', 'chosen', 'rejected'"
            f"; got keys {sorted(rec)}", reason="missing_field")
    p_c, chosen = split_dialogue(rec["chosen"])
    p_r, rejected = split_dialogue(rec["rejected"])
    if p_c != p_r:
        raise MalformedRecordError(
            "chosen and rejected dialogues have different prompts (earlier turns differ)",
            reason="prompt_mismatch")
    return p_c, chosen, rejected


def _records_from(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
                  ) -> Iterator[tuple[int, Any]]:
    """``(line_no, record | exception)`` from a JSONL path or an iterable of dicts."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ConfigError(f"Preference file {path!r} does not exist.")
        yield from jsonl_lines(path)  # the one JSONL reader (gzip, BOM, bad lines)
    else:
        yield from enumerate(source, start=1)


def load_preferences(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    strict: bool = False,
    limit: int | None = None,
) -> tuple[list[PreferencePair], LoadReport]:
    """Load preference pairs from an hh-rlhf or plain-record JSONL file (optionally gzipped),
    or from an iterable of record dicts. The format is detected per record.

    Args:
        source: path, or records (``{"chosen", "rejected"}`` dialogues or
            ``{"prompt", "chosen", "rejected"}``).
        strict: raise :class:`MalformedRecordError` (with ``.line``) on the first bad record
            instead of skipping it.
        limit: stop after this many loaded pairs.

    Returns:
        ``(pairs, report)``.
    """
    pairs: list[PreferencePair] = []
    reasons: Counter[str] = Counter()
    first_bad: int | None = None
    first_err = ""
    n_seen = 0
    seen_ids: Counter[str] = Counter()
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<records>"
    for n, rec in _records_from(source):
        if limit is not None and len(pairs) >= limit:
            break
        n_seen += 1
        try:
            if isinstance(rec, MalformedRecordError):
                raise rec
            prompt, chosen, rejected = parse_record(rec)
        except MalformedRecordError as e:
            if strict:
                raise MalformedRecordError(f"{name}, line {n}: {e}", line=n,
                                           reason=e.reason) from e
            reasons[e.reason] += 1
            if first_bad is None:
                first_bad, first_err = n, f"line {n}: {e}"
            continue
        cid = content_id(prompt, chosen, rejected)
        seen_ids[cid] += 1
        pid = cid if seen_ids[cid] == 1 else f"{cid}-{seen_ids[cid] - 1}"
        pairs.append(PreferencePair(prompt, chosen, rejected, pid))
    report = LoadReport(name, n_seen, len(pairs), sum(reasons.values()), first_bad,
                        dict(reasons), first_err)
    return pairs, report


def load_hh_rlhf(path: str | os.PathLike[str], strict: bool = False,
                 limit: int | None = None) -> tuple[list[PreferencePair], LoadReport]:
    """Load an hh-rlhf JSONL(.gz) file; see :func:`load_preferences`."""
    return load_preferences(path, strict=strict, limit=limit)


def load_records(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
                 strict: bool = False) -> tuple[list[PreferencePair], LoadReport]:
    """Load plain ``{prompt, chosen, rejected}`` records (path or iterable of dicts)."""
    return load_preferences(source, strict=strict)


def split_pairs(pairs: Sequence[PreferencePair], test_frac: float = 0.2, seed: int = 0,
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic train/test split by a seeded hash of each pair's id.

    A pair's side does not depend on the order or the other pairs in the list.
    """
    if not 0.0 < test_frac < 1.0:
        raise ConfigError(f"test_frac must be in (0, 1), got {test_frac}.")
    if len(pairs) == 0:
        raise EmptyDataError("split_pairs() got no pairs.")
    train, test = [], []
    for p in pairs:
        h = hashlib.sha256(f"{seed}:{p.id}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        (test if u < test_frac else train).append(p)
    return train, test
