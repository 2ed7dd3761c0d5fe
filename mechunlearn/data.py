"""Reading user data: JSONL files of texts or (prompt, response) records (``mechunlearn.data``;
the old name ``mechunlearn.datasets`` shadowed Hugging Face's ``datasets`` and is a deprecation alias).

Each line is a JSON object with ``text``, ``prompt`` + ``response``, or ``prompt`` +
``chosen`` + ``rejected`` (optionally ``id``; default: the record's index). One kind per file.
Gzipped files are read transparently (recognised by their magic bytes), and a UTF-8 byte
order mark (as Windows editors write) is skipped. Errors name the file and line.
:func:`jsonl_lines` is the one JSONL line reader: :func:`read_jsonl` (strict) and the SEAL
preference loader (lenient, counts skipped lines) both use it.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechunlearn.errors import (
    ConfigError,
    DataFileError,  # noqa: F401 (defined in errors.py, kept importable here)
    EmptyDataError,
    MalformedRecordError,
)

BOM = b"\xef\xbb\xbf"


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


def jsonl_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON value | MalformedRecordError)`` for each non-blank line of
    a JSONL file, plain or gzipped (magic bytes), with a UTF-8 BOM skipped.

    A bad line yields a :class:`MalformedRecordError` (``reason`` ``"not_utf8"`` or
    ``"bad_json"``) and reading goes on; a truncated or corrupt gzip stream yields one
    (``"truncated_stream"``) and stops. The caller decides whether to raise or skip.
    """
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    n = 0
    with (gzip.open if gz else open)(path, "rb") as f:
        it = iter(f)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as e:
                yield n + 1, MalformedRecordError(
                    f"compressed stream is truncated or corrupt after line {n} ({e})",
                    line=n + 1, reason="truncated_stream")
                return
            n += 1
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, MalformedRecordError(f"line is not valid UTF-8 ({e})", line=n,
                                              reason="not_utf8")
                continue
            if not text.strip():
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, MalformedRecordError(f"not valid JSON ({e.msg})", line=n,
                                              reason="bad_json")


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
    items: list = []
    ids: list[str] = []
    kind: str | None = None
    try:
        lines = list(jsonl_lines(p))
    except OSError as e:
        raise DataFileError(f"{p}: cannot be read ({type(e).__name__}: {e}).") from e
    for lineno, rec in lines:
        if isinstance(rec, MalformedRecordError):
            raise DataFileError(f"{p}:{lineno}: {rec}.")
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
