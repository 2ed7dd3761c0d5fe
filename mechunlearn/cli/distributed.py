"""``mechunlearn distributed ...``: data-parallel extraction under torchrun.

Subcommands (run each under ``torchrun --nproc_per_node=N`` for N ranks, or plain ``python``):

* ``extract --model DIR --data FILE.jsonl --site HOOK [--position mean] --out DIR``
* ``gradients --model DIR --data FILE.jsonl --site HOOK [--position response_mean] --out DIR``
* ``merge SRC DST`` (single process) -- one plain FeatureStore in global order
* ``stats STORE [--out FILE.pt]`` -- mean/covariance reduced across ranks

JSONL rows hold ``text``, or ``prompt`` + ``response`` (or ``prompt`` + ``chosen`` +
``rejected`` for ``gradients --loss dpo``), and an optional ``id`` (default: the record's 0-based index).
``torchrun -m mechunlearn distributed extract ...`` and the older
``torchrun -m mechunlearn.distributed extract ...`` run the same commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from mechunlearn.cli.base import OneLineGroup
from mechunlearn.cli.options import (
    BatchSize,
    Model,
    OverwriteFile,
    Position,
    position_value,
    refuse_unused,
)
from mechunlearn.errors import ConfigError, MechUnlearnError

distributed_app = typer.Typer(help="Data-parallel extraction under torchrun (run with "
                              "`torchrun --nproc_per_node=N -m mechunlearn distributed ...`).",
                              no_args_is_help=True, cls=OneLineGroup)  # one-line errors alone too
_DTYPES = ("float32", "float16", "bfloat16")

Data = Annotated[Path, typer.Option(help="JSONL: 'text' or 'prompt'+'response' records "
                                    "('prompt'+'chosen'+'rejected' for gradients --loss dpo), "
                                    "optional 'id' (default: the record's 0-based index).")]
SiteOpt = Annotated[str, typer.Option("--site", "--hook", help="Hook name, e.g. "
                                      "blocks.1.hook_resid_post.")]
Out = Annotated[Path, typer.Option(help="Sharded store folder (resumable).")]
ShardSize = Annotated[int, typer.Option(min=1, help="Rows per shard file.")]
DType = Annotated[str, typer.Option(help="Stored dtype: float32 | float16 | bfloat16.")]
Limit = Annotated[int | None, typer.Option(min=1, help="Use the first N samples.")]
Threads = Annotated[int, typer.Option(min=1, help="torch threads per rank.")]


def _items(recs: Any, loss: str | None) -> list[Any]:
    """The samples of ``--data`` as the command feeds them (``loss=None``: extract), refused
    with a message naming this command's options if their record kind does not fit."""
    from mechunlearn.data import model_inputs

    if loss == "dpo":
        if recs.kind != "triple":
            raise ConfigError("--loss dpo needs prompt/chosen/rejected records in --data; "
                              f"this file holds {'text' if recs.kind == 'text' else 'prompt/response'} "
                              "records: use --loss nll for them.")
        return list(recs.items)
    if recs.kind == "triple":
        what = ("--loss dpo (with --ref-model) reads prompt/chosen/rejected records, or write "
                "the responses as prompt/response records" if loss else "write the responses "
                "you mean as prompt/response records (`mechunlearn extract --field chosen|"
                "rejected` reads preference records directly)")
        raise ConfigError(f"--data holds prompt/chosen/rejected records, which `distributed "
                          f"{'gradients --loss nll' if loss else 'extract'}` does not read: "
                          f"{what}.")
    return model_inputs(recs, None, None)


def _common(model: Path, data: Path, site: str, position: str, batch_size: int,
            shard_size: int, dtype: str, limit: int | None, threads: int, out: Path,
            loss: str | None = None) -> dict[str, Any]:
    """Everything a sharded run needs, every argument checked before the model loads (the
    position's range right after, before any forward pass)."""
    import torch

    from mechunlearn.cli.checks import check_new_kind, check_position
    from mechunlearn.data import read_jsonl
    from mechunlearn.models import load_bridge
    from mechunlearn.sites import Site
    from mechunlearn.storage.sharded import ShardedStore, open_store

    if dtype not in _DTYPES:
        raise ConfigError(f"--dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
    if shard_size % batch_size:
        raise ConfigError(f"--shard-size ({shard_size}) must be a multiple of --batch-size "
                          f"({batch_size}) so every rank sees the single-process batches.")
    s = Site(site, position_value(position))
    recs = read_jsonl(data)
    items, ids = _items(recs, loss)[:limit], recs.ids[:limit]
    try:  # a sharded store of ours is resumed (and checked) by the library
        resumed = isinstance(open_store(out), ShardedStore)
    except (MechUnlearnError, OSError, ValueError):  # none there, or not a complete one
        resumed = False
    if not resumed:  # anything else: refuse a bad --out before loading
        check_new_kind(out, "sharded-store")
    torch.set_num_threads(threads)
    bridge = load_bridge(model)
    check_position(bridge, items, ids, s.position, data)
    return {"model": bridge, "data": items, "site": s,
            "kw": {"ids": ids, "batch_size": batch_size, "shard_size": shard_size,
                   "dtype": getattr(torch, dtype)}}


@distributed_app.command("extract")
def extract_cmd(model: Model, data: Data, site: SiteOpt, out: Out, position: Position = "mean",
                batch_size: BatchSize = 32, shard_size: ShardSize = 4096,
                dtype: DType = "float32", limit: Limit = None, threads: Threads = 1) -> None:
    """Extract features into a sharded FeatureStore (one sub-store per rank).

    --data: 'text' or prompt/response records (for preference records use `mechunlearn
    extract --field`). --shard-size must be a multiple of --batch-size.
    """
    from mechunlearn.storage.collectives import process_group
    from mechunlearn.storage.distributed import extract_distributed

    c = _common(model, data, site, position, batch_size, shard_size, dtype, limit, threads,
                out)
    with process_group() as (rank, world):
        store = extract_distributed(c["model"], c["data"], c["site"], out, **c["kw"])
        if rank == 0:
            typer.echo(f"extract: {len(store)} rows x d={store.d} from {world} rank(s) -> {out}")


@distributed_app.command("gradients")
def gradients_cmd(ctx: typer.Context, model: Model, data: Data, site: SiteOpt, out: Out,
                  position: Position = "response_mean", batch_size: BatchSize = 16,
                  shard_size: ShardSize = 4096, dtype: DType = "float32", limit: Limit = None,
                  threads: Threads = 1,
                  loss: Annotated[str, typer.Option(help="nll (prompt/response records) | "
                                                    "dpo (prompt/chosen/rejected records, "
                                                    "needs --ref-model).")] = "nll",
                  ref_model: Annotated[Path | None, typer.Option(
                      help="Reference model folder (dpo only).")] = None,
                  beta: Annotated[float, typer.Option(help="DPO temperature (dpo "
                                                      "only).")] = 0.1) -> None:
    """Activation-gradient features into a sharded FeatureStore.

    --shard-size must be a multiple of --batch-size.
    """
    from mechunlearn.models import load_bridge
    from mechunlearn.storage.collectives import process_group
    from mechunlearn.storage.distributed import gradient_features_distributed

    if loss not in ("nll", "dpo"):
        raise ConfigError(f"--loss must be nll or dpo, got {loss!r}.")
    refuse_unused(ctx, {"ref_model": "dpo", "beta": "dpo"}, loss, "distributed gradients --loss")
    if loss == "dpo" and ref_model is None:
        raise ConfigError("--loss dpo needs --ref-model (the reference model folder, e.g. the "
                          "SFT model the tuned model started from).")
    c = _common(model, data, site, position, batch_size, shard_size, dtype, limit, threads,
                out, loss)
    ref = load_bridge(ref_model) if ref_model is not None else None
    with process_group() as (rank, world):
        store = gradient_features_distributed(c["model"], c["data"], c["site"], out, loss=loss,
                                              ref_model=ref, beta=beta, **c["kw"])
        if rank == 0:
            typer.echo(f"gradients: {len(store)} rows x d={store.d} from {world} rank(s) -> "
                       f"{out}")


@distributed_app.command("merge")
def merge_cmd(src: Annotated[Path, typer.Argument(help="Sharded store.")],
              dst: Annotated[Path, typer.Argument(help="Plain FeatureStore to write.")]) -> None:
    """Write a sharded store as one FeatureStore in global order (single process).

    Rerun into the same DST to resume a merge; a DST holding anything else is refused.
    """
    from mechunlearn.cli.checks import check_new_kind, renamed
    from mechunlearn.storage.format import legacy_store_files
    from mechunlearn.storage.sharded import merge

    # the store layer's messages name --out and overwrite (other commands' options): name
    # merge's own arguments instead
    names = [(" (CLI: another --out)", " as DST"), ("another --out", "another DST"),
             (f"than {src} (", f"than SRC {src} ("),
             (", not even with overwrite", ""), (f"Output folder {dst}", f"DST {dst}"),
             (f"Output path {dst}", f"DST {dst}"), (f"Merge target {dst}", f"DST {dst}"),
             (f"No store at {src}", f"SRC {src} is not a store"),
             (f"Store at {dst}", f"DST {dst}")]
    try:
        check_new_kind(dst, "featurestore", legacy_store_files, flag="DST")  # no --overwrite
        out = merge(src, dst)
    except MechUnlearnError as e:
        raise renamed(e, names) from e
    typer.echo(f"merged {len(out)} rows into {out.path}")


@distributed_app.command("stats")
def stats_cmd(store: Annotated[Path, typer.Argument(help="Store (plain or sharded).")],
              out: Annotated[Path | None, typer.Option(
                  help="Save {'mean','cov','n'} with torch.save (a .pt file; plus "
                  "<out>.mechunlearn.json with the versions).")] = None,
              overwrite: OverwriteFile = False) -> None:
    """Mean/covariance of a store, reduced across ranks."""
    import io

    import torch

    from mechunlearn.outputs import check_output_file, write_output_file
    from mechunlearn.storage.collectives import distributed_mean_cov, process_group
    from mechunlearn.storage.sharded import open_store

    if out is not None:  # before any work: never replace a user's file silently
        out = check_output_file(out, overwrite, suffixes=(".pt",))
    elif overwrite:
        raise ConfigError("--overwrite applies only with --out (there is no file to replace); "
                          "drop it, or pass --out FILE.pt.")
    with process_group() as (rank, _):
        mean, cov, n = distributed_mean_cov(open_store(store))
        if rank == 0:
            if out is not None:
                buf = io.BytesIO()
                torch.save({"mean": mean, "cov": cov, "n": n}, buf)
                write_output_file(out, buf.getvalue(), "moments", {"store": str(store)})
            typer.echo(f"n={n} d={mean.shape[0]} trace(cov)={float(cov.trace()):.6g}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mechunlearn distributed`` with ``argv``; returns the exit code and lets errors
    propagate as exceptions. ``argv=None`` (``python -m mechunlearn.distributed``): the
    process arguments, with one-line errors and the exit code as ``mechunlearn`` gives them."""
    from typer.main import get_command

    rv = get_command(distributed_app).main(args=list(argv) if argv is not None else None,
                                           prog_name="python -m mechunlearn.distributed",
                                           standalone_mode=argv is None)
    return rv if isinstance(rv, int) else 0
