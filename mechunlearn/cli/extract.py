"""``mechunlearn extract``: features at a hook point into a resumable FeatureStore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mechunlearn.cli.options import BatchSize, Hook, Model, Position, make_site


def extract_cmd(
    model: Model,
    data: Annotated[Path, typer.Option(help="JSONL with 'text', 'prompt'+'response', or "
                                       "'prompt'+'chosen'+'rejected' records (+ 'id').")],
    hook: Hook,
    out: Annotated[Path, typer.Option(help="FeatureStore folder to write (resumes if "
                                      "present, on the same data only).")],
    position: Position = "last",
    batch_size: BatchSize = 32,
    shard_size: Annotated[int, typer.Option(min=1, help="Rows per shard file.")] = 4096,
    field: Annotated[str | None, typer.Option(help="For prompt/chosen/rejected records: "
                                              "which response to read, chosen | rejected.")]
    = None,
) -> None:
    """Extract features at a hook point into a resumable FeatureStore.

    ``--data`` takes ``text`` records, ``prompt``+``response`` records, or
    ``prompt``+``chosen``+``rejected`` records with ``--field chosen|rejected``.

    Under ``torchrun --nproc_per_node=N -m mechunlearn extract ...`` each rank extracts its
    share of the data into its own sub-store (read back in order with
    ``mechunlearn.storage.sharded.open_store``); ``--shard-size`` must then be a multiple of
    ``--batch-size``.
    """
    from mechunlearn.cli.checks import check_new_kind, check_position
    from mechunlearn.data import model_inputs, read_jsonl
    from mechunlearn.models import load_bridge
    from mechunlearn.storage.extract import extract_to_store

    recs = read_jsonl(data)
    items = model_inputs(recs, field, "--field")
    site = make_site(hook, position)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # launched by torchrun
    if distributed and shard_size % batch_size:  # before loading, named as flags
        from mechunlearn.errors import ConfigError

        raise ConfigError(f"--shard-size ({shard_size}) must be a multiple of --batch-size "
                          f"({batch_size}) under torchrun, so every rank sees the "
                          "single-process batches.")
    if not distributed:  # refuse a bad --out before loading
        from mechunlearn.storage.format import legacy_store_files

        check_new_kind(out, "featurestore", legacy=legacy_store_files)
    bridge = load_bridge(model)
    check_position(bridge, items, recs.ids, site.position, data)  # before any forward pass
    if distributed:
        from mechunlearn.storage.collectives import process_group
        from mechunlearn.storage.distributed import extract_distributed

        with process_group() as (rank, _):
            store = extract_distributed(bridge, items, site, out, ids=recs.ids,
                                        batch_size=batch_size, shard_size=shard_size)
        if rank:
            return
    else:
        try:
            store = extract_to_store(bridge, items, site, out, batch_size=batch_size,
                                     shard_size=shard_size, ids=recs.ids, progress=True)
        except KeyboardInterrupt:
            typer.echo(interrupted(out, len(items)), err=True)
            raise typer.Exit(130) from None
    typer.echo(f"{len(store)} x {store.d} features at {site.key} -> {out}")


def interrupted(out: Path, n: int) -> str:
    """The line printed when Ctrl-C stops ``extract``: what the store at ``out`` kept.

    The store rewrites its manifest only after a whole shard is on disk, and a rerun of the
    same command resumes after its last complete shard (``extract_to_store``), so the rows
    counted here are exactly the rows a rerun keeps.
    """
    from mechunlearn.errors import MechUnlearnError
    from mechunlearn.storage.store import FeatureStore

    try:
        store = FeatureStore.open(out, check_reads=False)
    except (MechUnlearnError, OSError):
        return (f"interrupted: nothing was kept at --out {out} (no complete shard was "
                "written); rerun the same command to start again.")
    return (f"interrupted: --out {out} keeps {len(store)} of {n} rows ({store.n_shards} "
            "complete shard(s)); rerun the same command to resume after them.")
