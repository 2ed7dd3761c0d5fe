"""Options shared by several commands (one declaration each) and small helpers they share.

Each option is an ``Annotated`` type: a command declares ``model: Model`` and gets the same
flag name and help everywhere. Defaults that differ per command (``--position``) are given
at the parameter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from mechunlearn.errors import ConfigError

OVERWRITE_HELP = ("Also replace a different kind of mechunlearn output at --out (a previous "
                  "output of the same kind is always replaced; folders holding files "
                  "mechunlearn did not write are never touched).")
POSITION_HELP = ("last | mean | response_mean | N (an integer: the N-th real token of each "
                 "sample, counted from 0; negative counts from the end, -1 is the last).")

Model = Annotated[Path, typer.Option("--model", help="Hugging Face model folder "
                                     "(save_pretrained: weights and tokenizer).")]
Hook = Annotated[str, typer.Option("--hook", help="TransformerLens hook name, e.g. "
                                   "blocks.1.hook_resid_post.")]
Position = Annotated[str, typer.Option("--position", help=POSITION_HELP)]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per forward pass.")]
Pos = Annotated[Path, typer.Option("--pos", help="X+ samples (reinforced behaviour), JSONL.")]
Neg = Annotated[Path, typer.Option("--neg", help="X- samples (discouraged behaviour), JSONL.")]
#: more permutation rounds than this resolve p below 1e-5 and only take hours (1e8 rounds
#: ran silently for good on a 40-sample set)
MAX_PERMUTATIONS = 100_000
Permutations = Annotated[int, typer.Option("--permutations", min=0, max=MAX_PERMUTATIONS,
                                           help="Permutation-test rounds (0: no test; at "
                                           "most 100000, p resolves to 1/(rounds+1)).")]
Threads = Annotated[int, typer.Option("--threads", min=0, max=1024,
                                      help="torch threads (0: torch's default; at most "
                                      "1024).")]
OverwriteFolder = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
OverwriteFile = Annotated[bool, typer.Option("--overwrite", help="Replace existing output "
                                             "files (and their .mechunlearn.json sidecars).")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Toy-world cache folder, "
                                               "one sub-folder per world (default: "
                                               "$MECHUNLEARN_CACHE/toyworld, else "
                                               "~/.cache/mechunlearn/toyworld).")]


def position_value(position: str, flag: str = "--position") -> int | str:
    """``"3"`` / ``"-1"`` -> int; ``last`` / ``mean`` / ``response_mean`` stay a str.

    Raises:
        ConfigError: naming ``flag`` and the values it takes, for anything else: a malformed
            integer such as ``--3`` or ``²``, an unknown name, or ``all`` (the library's
            per-token Site position: every command here needs one vector per sample).
    """
    from mechunlearn.sites import _POSITIONS

    pooled = [p for p in _POSITIONS if p != "all"]  # one vector per sample
    if re.fullmatch(r"-?[0-9]+", position):
        return int(position)
    if position in pooled:
        return position
    valid = (f"use {', '.join(pooled)}, or an integer N (the N-th real token of each "
             "sample from 0; -1 is the last)")
    if position == "all":
        raise ConfigError(f"{flag} all keeps every token position, but this command stores "
                          f"or compares one vector per sample: {valid}.")
    raise ConfigError(f"{flag} {position!r} is not a token index (e.g. 0 or -1) nor a pooled "
                      f"position: {valid}.")


def make_site(hook: str, position: str, head: int | None = None) -> Any:
    """The :class:`~mechunlearn.sites.Site` a ``--hook``/``--position`` pair names."""
    from mechunlearn.sites import Site

    return Site(hook, position_value(position), head)


def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads (0: leave torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def check_method(method: str, table: Any, flag: str = "--method") -> None:
    """Raise :class:`ConfigError` unless ``method`` is a key of ``table``."""
    if method not in table:
        raise ConfigError(f"{flag} must be one of {sorted(table)}, got {method!r}.")


def check_distinct(a: Path, b: Path, what: str) -> None:
    """Refuse the same file twice where two different sets are needed (e.g. --pos/--neg)."""
    if Path(a).expanduser().resolve() == Path(b).expanduser().resolve():
        raise ConfigError(f"{what} name the same file ({a}); pass two different sets of "
                          "samples (with the same samples there is nothing to separate).")


def features(model: Any, path: Path, site: Any, batch_size: int, field: str | None = None,
             flag: str | None = None) -> Any:
    """Features of a JSONL file's samples at ``site`` (ids from the file)."""
    from mechunlearn.data import model_inputs, read_jsonl
    from mechunlearn.features import extract

    recs = read_jsonl(path)
    return extract(model, model_inputs(recs, field, flag), site, batch_size=batch_size,
                   ids=recs.ids, progress=True)


def split_list(text: str, flag: str, choices: Any = None) -> tuple[str, ...]:
    """The values of a comma-separated option, in order (``""``: an empty tuple).

    Raises:
        ConfigError: naming ``flag`` for a value outside ``choices`` (when given) or a value
            listed twice (a repeated layer or hook kind would be computed twice and its rows
            would no longer match the sample ids).
    """
    values = tuple(v.strip() for v in str(text).split(",") if v.strip())
    if choices is not None:
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise ConfigError(f"{flag}: unknown value(s) {unknown}; choose from "
                              f"{list(choices)}.")
    check_no_repeats(values, flag)
    return values


def split_ints(text: str, flag: str) -> tuple[int, ...]:
    """The integers of a comma-separated option such as ``--layers 0,2`` (``""``: empty).

    Raises:
        ConfigError: naming ``flag`` for a value that is not an integer or is listed twice.
    """
    values = split_list(text, flag)
    bad = [v for v in values if not v.lstrip("-").isdigit()]
    if bad:
        raise ConfigError(f"{flag} takes comma-separated integers (e.g. {flag} 0,2), got "
                          f"{bad}.")
    ints = tuple(int(v) for v in values)
    check_no_repeats(ints, flag)
    return ints


def check_no_repeats(values: Any, flag: str) -> None:
    """Raise :class:`ConfigError` naming ``flag`` and the first value listed twice."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{flag} lists {v!r} twice; list each value once.")
        seen.add(v)


def refuse_unused(ctx: Any, applies: dict[str, str], chosen: str, command: str) -> None:
    """Refuse options the user gave that the chosen method ignores.

    ``applies`` maps a parameter name (``"repair_steps"``) to the method it belongs to
    (``"unlearn"``); an option given on the command line (or by an environment variable)
    whose method is not ``chosen`` raises :class:`ConfigError`: ``--repair-steps applies to
    `edit unlearn` only; drop it``. Options left at their default are never refused.
    """
    for name, method in applies.items():
        src = ctx.get_parameter_source(name)  # click's ParameterSource (typer vendors click)
        if method != chosen and getattr(src, "name", "DEFAULT") not in ("DEFAULT",
                                                                         "DEFAULT_MAP"):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} applies to `{command} {method}` only; drop it from "
                              f"`{command} {chosen}`.")
