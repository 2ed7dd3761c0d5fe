"""The command line's error rule: every error is one line on stderr and a non-zero exit.

:class:`OneLineGroup` is the click group behind the typer app. It turns click's usage errors
(unknown option, missing argument, bad value: exit 2) and the library's typed errors
(:class:`~mechunlearn.errors.MechUnlearnError`, missing or wrong-kind paths: exit 2) into
``error: <what> (see '<command> --help')`` instead of typer's boxed multi-line panel or a
traceback. An unexpected exception is a bug and keeps its traceback.

Warnings print one line each too, ``warning: <message> (<Category>)`` (Python's default format
adds a second line with the source line that warned); the format is installed only while a
command runs, so library users keep their own. Command help paragraphs are re-flowed to the
terminal width (typer's rich help keeps a docstring's line breaks) and reStructuredText
literals (````x````) print as ```x```.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click
import typer
from typer.core import TyperGroup

from mechunlearn.errors import MechUnlearnError

try:  # typer >= 0.2x vendors click as typer._click; older typer raises click's own errors
    from typer._click.exceptions import NoArgsIsHelpError
except ImportError:  # pragma: no cover - typer with plain click
    from click.exceptions import NoArgsIsHelpError

#: click's usage errors, from typer's vendored click and from click itself
USAGE_ERRORS = (typer.TyperException, click.ClickException)
ABORTS = (typer.Abort, click.exceptions.Abort)

#: errors a user can cause with a bad input: one line, exit 2
USER_ERRORS = (MechUnlearnError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError)


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (a message must fit one terminal line)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def say_error(message: str) -> None:
    """Print ``error: <message>`` as one line on stderr."""
    typer.echo(f"error: {one_line(message)}", err=True)


def _usage_message(e: Any) -> str:
    msg = e.format_message()
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        return f"{ctx.command_path}: {msg} (see '{ctx.command_path} --help')"
    return msg


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the CLI: ``warning: <message> (<Category>)``, one line on
    stderr."""
    typer.echo(f"warning: {one_line(str(message))} ({category.__name__})", err=True)


def reflow(text: str | None) -> str | None:
    """Help text with each paragraph's lines joined (paragraphs stay apart) and ````x````
    shown as ```x```; a paragraph starting with ``\\b`` keeps its lines (click's rule)."""
    if not text:
        return text
    import inspect

    paras = inspect.cleandoc(text).split("\n\n")
    joined = [p if p.startswith("\b") else " ".join(ln.strip() for ln in p.splitlines())
              for p in paras]
    return re.sub(r"``([^`]+)``", r"`\1`", "\n\n".join(joined))


def _reflow_all(command: Any) -> None:
    command.help = reflow(command.help)
    for sub in getattr(command, "commands", {}).values():
        _reflow_all(sub)


class OneLineGroup(TyperGroup):
    """Typer's group with one-line errors and warnings and re-flowed help (see the module
    doc); used as the app's ``cls``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _reflow_all(self)
        from mechunlearn.cli.guards import install

        install(self)  # repeated options and outputs holding inputs: refused

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            with warnings.catch_warnings():  # restores the caller's showwarning afterwards
                warnings.showwarning = show_warning
                rv = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as e:  # a bare command: its help, as click does
            e.show()
            sys.exit(e.exit_code)
        except USAGE_ERRORS as e:
            say_error(_usage_message(e))
            sys.exit(e.exit_code)
        except ABORTS:
            say_error("aborted.")
            sys.exit(1)
        except USER_ERRORS as e:
            say_error(str(e))
            sys.exit(2)
        # standalone_mode=False returns the code of a typer.Exit / ctx.exit (None: success)
        sys.exit(rv if isinstance(rv, int) else 0)

