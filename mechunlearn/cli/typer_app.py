"""The ``mechunlearn`` typer app: every command group registered on one app.

Every command works on a user's own model (a local Hugging Face folder written with
``save_pretrained``, model and tokenizer) and data (JSONL), or on the embedded toy world.
Errors print one line (``error: ...``) on stderr: usage errors and bad input exit with code
2 (:class:`mechunlearn.cli.base.OneLineGroup`); no tracebacks for bad input.
"""

from __future__ import annotations

import typer

from mechunlearn.cli.attribute import attribute_cmd
from mechunlearn.cli.base import OneLineGroup
from mechunlearn.cli.diagnose import diagnose_cmd
from mechunlearn.cli.directions import directions_cmd, sweep_cmd
from mechunlearn.cli.distributed import distributed_app
from mechunlearn.cli.doctor import doctor_cmd
from mechunlearn.cli.edit import edit_cmd
from mechunlearn.cli.extract import extract_cmd
from mechunlearn.cli.seal import seal_cmd
from mechunlearn.cli.world import demo_cmd, toyworld_app

HELP = "Attribute, find and remove what preference tuning taught a model, at any hook point."

app = typer.Typer(help=HELP, cls=OneLineGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Attribute, find and remove what preference tuning taught a model, at any hook point."""


for _name, _fn in (("extract", extract_cmd), ("attribute", attribute_cmd),
                   ("directions", directions_cmd), ("sweep", sweep_cmd), ("edit", edit_cmd),
                   ("seal", seal_cmd), ("diagnose", diagnose_cmd), ("doctor", doctor_cmd),
                   ("demo", demo_cmd)):
    app.command(_name)(_fn)
app.add_typer(toyworld_app, name="toyworld")
app.add_typer(distributed_app, name="distributed")


def main() -> None:
    """Console-script entry point (``mechunlearn``, ``python -m mechunlearn``)."""
    app(prog_name="mechunlearn")
