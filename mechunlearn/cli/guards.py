"""Argument guards every command gets, installed on the app's click commands.

* **A repeated single-value option is refused** (``--layers 0 --layers 1``, ``--judge a
  --judge b``): click keeps the last value silently, so the run would differ from what the
  user typed. Options declared ``multiple`` may repeat.
* **An output and an input may not overlap**: ``--out`` (``DST`` for ``distributed
  merge``) equal to or around a path the same command reads (``--model``, ``--train``,
  ``--data``, ...) is refused before any work, even with ``--overwrite``: replacing the
  output would delete the inputs (a new-user run lost a worked example's model and data with
  ``diagnose --out <example folder> --overwrite``). An output inside a folder the command
  reads (``edit --model m --out m/edited``) is refused too: it would write into the input
  (a model folder, a store, saved directions). Folders the command also writes (``--cache``,
  ``--cache-dir``) are exempt from that second rule.

:func:`install` wraps each leaf command's ``parse_args`` and callback; errors are
:class:`~mechunlearn.errors.MechUnlearnError` subclasses, printed as one line (exit 2) by
:class:`~mechunlearn.cli.base.OneLineGroup`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechunlearn.errors import ConfigError, OutputPathError

#: parameter names that are outputs
OUTPUTS = ("out", "dst")
#: folders a command reads and also writes (caches): an output may lie inside them
CACHES = ("cache", "cache_dir")


def refuse_repeats(command: Any, args: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming a single-value option given twice in ``args``."""
    single: dict[str, Any] = {}
    for p in command.params:
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "multiple", False) \
                and not getattr(p, "count", False):
            for opt in [*p.opts, *p.secondary_opts]:
                single[opt] = p
    seen: dict[str, str] = {}
    for tok in args:
        if tok == "--":
            break
        name = tok.split("=", 1)[0]
        p = single.get(name)
        if p is None:
            continue
        if p.name in seen:
            raise ConfigError(f"{name} is given twice; give it once "
                              "(a repeated option would keep only the last value).")
        seen[p.name] = tok


def _paths(value: Any) -> list[Path]:
    vals = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in vals if isinstance(v, Path)]


def refuse_inputs_inside_output(params: dict[str, Any], flags: dict[str, str]) -> None:
    """Raise :class:`OutputPathError` when an output parameter equals or contains an existing
    input path of the same command, or lies inside an input folder that is not a cache
    (``params``: the parsed values; ``flags``: name -> flag). The one rule for every command
    (``edit`` included)."""
    for o in OUTPUTS:
        if not isinstance(params.get(o), Path):
            continue
        out, oflag = params[o].expanduser().resolve(), flags.get(o, o)
        for name, value in params.items():
            if name in OUTPUTS:
                continue
            for p in _paths(value):
                if not p.exists():
                    continue
                r, flag = p.expanduser().resolve(), flags.get(name, name)
                if r == out or out in r.parents:
                    raise OutputPathError(
                        f"{oflag} {params[o]} holds {flag} {p}, which this command reads: "
                        f"writing the output there would delete it. Choose another {oflag}.")
                if r in out.parents and r.is_dir() and name not in CACHES:
                    raise OutputPathError(
                        f"{oflag} {params[o]} is inside {flag} {p}, which this command reads: "
                        "the output would be written into that folder among its files. "
                        f"Choose another {oflag}, outside {p}.")


def _guard(command: Any) -> None:
    if getattr(command, "_mechunlearn_guarded", False):
        return
    command._mechunlearn_guarded = True
    parse = command.parse_args

    def parse_args(ctx: Any, args: list[str]) -> Any:
        refuse_repeats(command, args)
        return parse(ctx, args)

    command.parse_args = parse_args
    names = {p.name for p in command.params}
    if command.callback is None or not names & set(OUTPUTS):
        return
    flags = {p.name: (p.opts[0] if getattr(p, "param_type_name", "") == "option"
                      else p.name.upper()) for p in command.params}
    callback = command.callback

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        refuse_inputs_inside_output(kwargs, flags)
        return callback(*args, **kwargs)

    command.callback = checked


def install(command: Any) -> None:
    """Guard every leaf command under ``command`` (a click group or command)."""
    subs = getattr(command, "commands", None)
    if subs is None:
        _guard(command)
        return
    for sub in subs.values():
        install(sub)
