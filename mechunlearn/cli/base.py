"""The command line's error rule: every error is one line on stderr and a non-zero exit.

:class:`OneLineGroup` is the click group behind the typer app. It turns click's usage errors
(unknown option, missing argument, bad value: exit 2) and the library's typed errors
(:class:`~mechunlearn.errors.MechUnlearnError`, missing or wrong-kind paths: exit 2) into
``error: <what> (see '<command> --help')`` instead of typer's boxed multi-line panel or a
traceback. An unexpected exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
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


class OneLineGroup(TyperGroup):
    """Typer's group with one-line errors (see the module doc); used as the app's ``cls``."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
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

