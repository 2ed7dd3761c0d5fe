"""The ``mechunlearn`` command line (typer).

Every command works on a user's own model (a local Hugging Face folder written with
``save_pretrained``, model and tokenizer) and data (JSONL), or on the embedded toy world.
Errors print one line (``error: ...``) and exit with code 2; no tracebacks for bad input.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Attribute, find and remove what preference tuning taught a model, at any hook point.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Attribute, find and remove what preference tuning taught a model, at any hook point."""


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one-line messages with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mechunlearn.errors import MechUnlearnError

        try:
            return fn(*args, **kwargs)
        except (MechUnlearnError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                PermissionError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _site(hook: str, position: str, head: int | None = None) -> Any:
    from mechunlearn.sites import Site

    pos: Any = int(position) if position.lstrip("-").isdigit() else position
    return Site(hook, pos, head)


@app.command()
@friendly
def extract(
    model: Path = typer.Option(..., help="Hugging Face model folder (save_pretrained)."),
    data: Path = typer.Option(..., help="JSONL with 'text' or 'prompt'+'response' (+ 'id')."),
    hook: str = typer.Option(..., help="TransformerLens hook name, e.g. blocks.1.hook_resid_post."),
    out: Path = typer.Option(..., help="FeatureStore folder to write (resumes if present)."),
    position: str = typer.Option("last", help="last | mean | response_mean | <int>."),
    batch_size: int = typer.Option(32, min=1),
    shard_size: int = typer.Option(4096, min=1),
    field: str | None = typer.Option(None, help="For prompt/chosen/rejected records: which "
                                     "response to read, chosen | rejected."),
) -> None:
    """Extract features at a hook point into a resumable FeatureStore.

    ``--data`` takes ``text`` records, ``prompt``+``response`` records, or
    ``prompt``+``chosen``+``rejected`` records with ``--field chosen|rejected``.

    Under ``torchrun --nproc_per_node=N -m mechunlearn extract ...`` each rank extracts its
    share of the data into its own sub-store (read back in order with
    ``mechunlearn.sharded_store.open_store``); ``--shard-size`` must then be a multiple of
    ``--batch-size``.
    """
    import os

    from mechunlearn.datasets import model_inputs, read_jsonl
    from mechunlearn.models import load_bridge
    from mechunlearn.store import extract_to_store

    recs = read_jsonl(data)
    items = model_inputs(recs, field, "--field")
    site = _site(hook, position)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # refuse a bad --out before loading
        from mechunlearn.outputs import check_destination
        from mechunlearn.store import legacy_store_files

        check_destination(out, "featurestore", legacy=legacy_store_files)
    bridge = load_bridge(model)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
        from mechunlearn.distributed import extract_distributed, process_group

        with process_group() as (rank, _):
            store = extract_distributed(bridge, items, site, out, ids=recs.ids,
                                        batch_size=batch_size, shard_size=shard_size)
        if rank:
            return
    else:
        store = extract_to_store(bridge, items, site, out, batch_size=batch_size,
                                 shard_size=shard_size, ids=recs.ids, progress=True)
    typer.echo(f"{len(store)} x {store.d} features at {site.key} -> {out}")


@app.command()
@friendly
def demo(
    world: str = typer.Option("hard", help="Toy world preset: hard | easy | tiny."),
    out: Path = typer.Option(Path("mechunlearn-report"), help="Report folder (replaced)."),
    cache_dir: Path | None = typer.Option(None, help="Toy-world cache (default: "
                                          "$MECHUNLEARN_CACHE or ~/.cache/mechunlearn)."),
    threads: int = typer.Option(0, help="torch threads (0: torch's default)."),
) -> None:
    """`mechunlearn diagnose` on the embedded toy model, with its ground truth; writes a report.

    Builds (or loads the cached) toy world and runs the diagnose chain on it: bad responses
    to half of its trigger prompts, attributed over a layer sweep (convex decomposition and
    baselines, AUC against the planted poison), a tuned-vs-SFT direction with held-out
    evidence, edits (projection, orthogonalisation, unlearning, selective forgetting, U2A)
    measured on the other half and undone, the gold model measured beside them, and the
    world's refusal bias; writes Markdown + PNG + CSV/JSON.
    """
    import torch

    from mechunlearn.studies.demo import run_demo

    if threads > 0:
        torch.set_num_threads(threads)
    res = run_demo(world, out, cache_dir, say=lambda m: typer.echo(m))
    typer.echo(f"Report: {res.report}")


toyworld_app = typer.Typer(help="The embedded toy preference world.", no_args_is_help=True)
app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("build")
@friendly
def toyworld_build(
    world: str = typer.Argument("hard", help="Preset: hard | easy | tiny."),
    cache_dir: Path | None = typer.Option(None, help="Cache folder."),
    force: bool = typer.Option(False, help="Rebuild even if a valid cache exists."),
) -> None:
    """Generate the world's data and train its SFT, tuned and gold models (cached)."""
    from mechunlearn import toyworld

    folder = toyworld.build(world, cache_dir=cache_dir, progress=lambda m: typer.echo(m),
                            force=force)
    typer.echo(f"World {world!r} ready at {folder}")


def _register_tools() -> None:
    from mechunlearn.cli_tools import register

    register(app, friendly, _site)
    from mechunlearn.conformance.doctor import register_cli

    register_cli(app, friendly)
    from mechunlearn.studies.cli import register_cli as register_diagnose

    register_diagnose(app, friendly)


_register_tools()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mechunlearn")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
