"""``mechunlearn demo`` and ``mechunlearn toyworld ...``: the embedded toy preference world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechunlearn.cli.options import CacheDir, Threads, set_threads

toyworld_app = typer.Typer(help="The embedded toy preference world.", no_args_is_help=True)


def check_world(world: str, flag: str) -> None:
    """Refuse a toy-world name that is not a preset, naming ``flag`` and the presets.

    Raises:
        ConfigError: e.g. ``WORLD 'bogus' is not a toy world: choose one of easy, hard, tiny.``.
    """
    from mechunlearn.errors import ConfigError
    from mechunlearn.toyworld.config import PRESETS

    if world not in PRESETS:
        raise ConfigError(f"{flag} {world!r} is not a toy world: choose one of "
                          f"{', '.join(sorted(PRESETS))}.")


def demo_cmd(
    world: Annotated[str, typer.Option(help="Toy world preset: hard | easy | tiny.")] = "hard",
    out: Annotated[Path, typer.Option(help="Report folder (a previous report there is "
                                      "replaced; a folder holding other files is refused).")]
    = Path("mechunlearn-report"),
    cache_dir: CacheDir = None,
    threads: Threads = 0,
) -> None:
    """`mechunlearn diagnose` on the embedded toy model, with its ground truth; writes a report.

    Builds (or loads the cached) toy world and runs the diagnose chain on it: bad responses
    to half of its trigger prompts, attributed over a layer sweep (convex decomposition and
    baselines, AUC against the planted poison), a tuned-vs-SFT direction with held-out
    evidence, edits (projection, orthogonalisation, unlearning, selective forgetting, U2A)
    measured on the other half and undone, the gold model measured beside them, and the
    world's refusal bias; writes Markdown + PNG + CSV/JSON.
    """
    from mechunlearn.studies.demo import run_demo

    check_world(world, "--world")
    set_threads(threads)
    res = run_demo(world, out, cache_dir, say=lambda m: typer.echo(m))
    typer.echo(f"Report: {res.report}")


@toyworld_app.command("build")
def toyworld_build(
    world: Annotated[str, typer.Argument(help="Preset: hard | easy | tiny.")] = "hard",
    cache_dir: CacheDir = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a valid cache exists.")] = False,
    train: Annotated[bool, typer.Option(help="Train the models even when the package ships "
                                        "a trained copy of this world (the default hard "
                                        "world); with a valid cached build, only together "
                                        "with --force.")] = False,
) -> None:
    """Generate the world's data and train its SFT, tuned and gold models, or copy the shipped
    trained models of the default world; then measure the rates (cached)."""
    from mechunlearn import toyworld

    check_world(world, "WORLD")
    if train and not force:
        _warn_if_built(world, cache_dir)
    folder = toyworld.build(world, cache_dir=cache_dir, progress=lambda m: typer.echo(m),
                            force=force, embedded=not train)
    typer.echo(f"World {world!r} ready at {folder}")


def _warn_if_built(world: str, cache_dir: Path | None) -> None:
    """Warn that ``--train`` will do nothing: a valid build is already cached (``build``
    returns it without training unless ``--force``)."""
    import warnings

    from mechunlearn.toyworld.config import resolve_config
    from mechunlearn.toyworld.world import cache_root, check_build

    cfg = resolve_config(world)
    final = cache_root(cache_dir) / cfg.hash()
    if final.exists() and check_build(final, cfg) is None:
        warnings.warn(f"--train has no effect: world {world!r} is already built at {final}; "
                      "add --force to rebuild it by training.", UserWarning, stacklevel=2)
