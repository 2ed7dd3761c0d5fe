"""Reading user data: JSONL files of texts or (prompt, response) records (``mechunlearn.data``;
the old name ``mechunlearn.datasets`` shadowed Hugging Face's ``datasets`` and is a deprecation alias).

Each line is a JSON object with ``text``, ``prompt`` + ``response``, or ``prompt`` +
``chosen`` + ``rejected`` (optionally ``id``; default: the record's index). One kind per file.
Gzipped files (``.gz``) are read transparently. Errors name the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechunlearn.errors import (
    ConfigError,
    DataFileError,  # noqa: F401 (defined in errors.py, kept importable here)
    EmptyDataError,
    MechUnlearnError,
)


@dataclass(frozen=True)
class Records:
    """Texts, (prompt, response) pairs or (prompt, chosen, rejected) triples, with ids."""

    items: list[Any]
    ids: list[str]
    kind: str = "text"  # "text" | "pair" | "triple"

    @property
    def is_pairs(self) -> bool:
        """True if items are (prompt, response) pairs."""
        return self.kind == "pair"


def _kind(rec: dict[str, Any]) -> tuple[str, list[str]] | None:
    if "text" in rec:
        return "text", ["text"]
    if {"prompt", "chosen", "rejected"} <= rec.keys():
        return "triple", ["prompt", "chosen", "rejected"]
    if {"prompt", "response"} <= rec.keys():
        return "pair", ["prompt", "response"]
    return None


def read_jsonl(path: str | os.PathLike[str]) -> Records:
    """Read a JSONL (or .jsonl.gz) file of text, pair or preference-triple records.

    Raises :class:`DataFileError` naming the line for malformed input, and
    :class:`EmptyDataError` for a file with no records.
    """
    p = Path(path)
    if p.is_dir():
        raise DataFileError(f"Data file {p} is a folder, not a JSONL file; pass the .jsonl "
                            "(or .jsonl.gz) file itself.")
    if not p.is_file():
        raise DataFileError(f"Data file {p} does not exist.")
    opener = gzip.open if p.suffix == ".gz" else open
    items: list = []
    ids: list[str] = []
    kind: str | None = None
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFileError(f"{p}:{lineno}: not valid JSON ({e.msg}).") from e
                if not isinstance(rec, dict):
                    raise DataFileError(f"{p}:{lineno}: expected a JSON object.")
                found = _kind(rec)
                if found is None:
                    raise DataFileError(
                        f"{p}:{lineno}: record has keys {sorted(rec)}; expected 'text', "
                        "'prompt'+'response' or 'prompt'+'chosen'+'rejected'."
                    )
                this, keys = found
                if kind is not None and this != kind:
                    raise DataFileError(f"{p}:{lineno}: file mixes {this!r} records with {kind!r} ones.")
                kind = this
                vals = [rec[k] for k in keys]
                if not all(isinstance(v, str) for v in vals):
                    raise DataFileError(f"{p}:{lineno}: text fields must be strings.")
                items.append(vals[0] if this == "text" else tuple(vals))
                ids.append(str(rec.get("id", len(ids))))
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, MechUnlearnError):
            raise
        raise DataFileError(f"{p}: cannot be read ({type(e).__name__}: {e}).") from e
    if not items:
        raise EmptyDataError(f"{p} holds no records.")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{p}: record ids are not unique.")
    return Records(items, ids, kind or "text")


def model_inputs(recs: Records, field: str | None = None, flag: str | None = "field"
                 ) -> list[Any]:
    """Items to feed a model: texts, ``(prompt, response)`` pairs, or for preference triples
    the ``(prompt, chosen)`` or ``(prompt, rejected)`` pairs picked by ``field``.

    Raises :class:`ConfigError` naming ``flag`` when triples come without ``field``, or
    ``field`` is given for records that have no such choice. ``flag=None``: the caller
    offers no choice, so triples are refused with the formats it does take.
    """
    if recs.kind == "triple":
        if flag is None:
            raise ConfigError(
                "This command reads 'text' or 'prompt'+'response' records, not "
                "prompt/chosen/rejected ones: write the responses you mean as prompt/response "
                "records (`mechunlearn extract` and `seal` read preference records directly)."
            )
        if field not in ("chosen", "rejected"):
            raise ConfigError(
                f"The data holds prompt/chosen/rejected records; pass {flag} chosen or {flag} "
                f"rejected to choose which response to read (got {field!r})."
            )
        j = 1 if field == "chosen" else 2
        return [(t[0], t[j]) for t in recs.items]
    if field is not None:
        raise ConfigError(
            f"{flag} {field!r} only applies to prompt/chosen/rejected records; this file holds "
            f"{'texts' if recs.kind == 'text' else 'prompt/response pairs'}: drop {flag}."
        )
    return list(recs.items)
