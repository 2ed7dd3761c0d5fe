"""The ``mechunlearn`` command line: one typer app (:data:`app`), one module per command
group, one-line errors (:mod:`mechunlearn.cli.base`)."""

from mechunlearn.cli.typer_app import app, main

__all__ = ["app", "main"]
