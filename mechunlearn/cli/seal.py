"""``mechunlearn seal``: reward-model diagnostics on preference data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechunlearn.cli.options import OverwriteFolder


def seal_cmd(
    data: Annotated[Path, typer.Option(help="Preference pairs: hh-rlhf JSONL(.gz) or "
                                       "prompt/chosen/rejected JSONL.")],
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("seal-report"),
    model: Annotated[Path | None, typer.Option(help="Reward-model body (HF folder); "
                                               "default: the packaged all-MiniLM-L6-v2.")]
    = None,
    cache: Annotated[Path | None, typer.Option(help="Feature and fitted-head cache "
                                               "folder (default "
                                               "~/.cache/mechunlearn/seal).")] = None,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens kept (from the end).")] = 128,
    boot: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for imprint "
                                      "CIs.")] = 1000,
    overwrite: OverwriteFolder = False,
) -> None:
    """SEAL diagnostics: train a reward model, then resistance, imprint and robustness."""
    from mechunlearn.outputs import check_destination
    from mechunlearn.seal.run import run_seal

    check_destination(out, "seal-report", overwrite)
    body = None
    if model is not None:
        from mechunlearn.models import load_bridge

        body = load_bridge(model)
        from mechunlearn.errors import ConfigError
        from mechunlearn.tokens import context_length

        n_ctx = context_length(body)
        if max_length > n_ctx:  # else a sample fails mid-run, after the features of others
            raise ConfigError(f"--max-length {max_length} is longer than the context of --model "
                              f"{model} ({n_ctx} tokens): pass --max-length {n_ctx} or less.")
    run = run_seal(data, out, model=body, cache=cache, max_length=max_length, n_boot=boot,
                   say=lambda m: typer.echo(m), overwrite=overwrite)
    after = run.report.resistance.get("after, test")
    if after is not None:
        typer.echo(f"test agreement {after.agreement:.3f}, resistance {after.resistance:.3f}")
    typer.echo(f"report -> {run.folder}")
