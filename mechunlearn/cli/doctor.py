"""``mechunlearn doctor``: do the library's assumptions hold on your model?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechunlearn.cli.options import Model, OverwriteFile, split_list
from mechunlearn.conformance.doctor import CHECKS  # importing doctor registers the checks


def doctor_cmd(
    model: Model,
    checks: Annotated[str, typer.Option(help=f"Comma-separated subset of {list(CHECKS)} "
                                        "(default: all).")]
    = "",
    csv: Annotated[Path | None, typer.Option(help="Also write the table to this CSV (plus "
                                             "<csv>.mechunlearn.json with the versions).")]
    = None,
    overwrite: OverwriteFile = False,
) -> None:
    """Check that hooks, identities, edits and caching hold on your model; exit 1 if not."""
    from mechunlearn.conformance.doctor import doctor, format_report, passed
    from mechunlearn.outputs import check_output_file, write_output_file

    chosen = list(split_list(checks, "--checks", list(CHECKS))) or None
    if csv is not None:
        check_output_file(csv, overwrite, (".csv",))  # never replace a user's file silently
    df = doctor(model, checks=chosen)
    typer.echo(format_report(df))
    if csv is not None:
        write_output_file(csv, df.to_csv(index=False).encode(), "doctor-csv",
                          {"model": str(model), "passed": bool(passed(df))})
    if not passed(df):
        raise typer.Exit(1)
