"""Reading user data: JSONL files of texts or (prompt, response) records.

Each line is a JSON object with either ``text`` or ``prompt`` + ``response`` (optionally
``id``). Gzipped files (``.gz``) are read transparently. Errors name the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mechunlearn.errors import ConfigError, EmptyDataError, MechUnlearnError


class DataFileError(MechUnlearnError, ValueError):
    """A data file that cannot be read or has a malformed line."""


@dataclass(frozen=True)
class Records:
    """Texts or (prompt, response) pairs with ids, as read from a JSONL file."""

    items: list[str] | list[tuple[str, str]]
    ids: list[str]

    @property
    def is_pairs(self) -> bool:
        """True if items are (prompt, response) pairs."""
        return bool(self.items) and not isinstance(self.items[0], str)


def read_jsonl(path: str | os.PathLike[str]) -> Records:
    """Read a JSONL (or .jsonl.gz) file of ``{"text"}`` or ``{"prompt", "response"}`` records.

    Raises :class:`DataFileError` naming the line for malformed input, and
    :class:`EmptyDataError` for a file with no records.
    """
    p = Path(path)
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
                this = "text" if "text" in rec else "pair" if {"prompt", "response"} <= rec.keys() else None
                if this is None:
                    raise DataFileError(
                        f"{p}:{lineno}: record needs 'text' or 'prompt' and 'response' fields, "
                        f"has {sorted(rec)}."
                    )
                if kind is not None and this != kind:
                    raise DataFileError(f"{p}:{lineno}: mixes {this!r} records with {kind!r} ones.")
                kind = this
                vals = [rec["text"]] if this == "text" else [rec["prompt"], rec["response"]]
                if not all(isinstance(v, str) for v in vals):
                    raise DataFileError(f"{p}:{lineno}: text fields must be strings.")
                items.append(vals[0] if this == "text" else (vals[0], vals[1]))
                ids.append(str(rec.get("id", len(ids))))
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, MechUnlearnError):
            raise
        raise DataFileError(f"{p}: cannot be read ({type(e).__name__}: {e}).") from e
    if not items:
        raise EmptyDataError(f"{p} holds no records.")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{p}: record ids are not unique.")
    return Records(items, ids)
