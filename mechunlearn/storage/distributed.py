"""Data-parallel feature extraction and statistics on ``torch.distributed`` (``torchrun``).

Launch any of these under ``torchrun`` (gloo on CPU, NCCL on GPU, multi-node by the same
launcher); without it they run as one rank of one. Each rank computes a deterministic subset
of ``shard_size``-row blocks (block ``b`` on rank ``b % world``) into its own FeatureStore
sub-store; see :mod:`mechunlearn.storage.sharded` for the layout and the ordered reader. The
result equals the single-process store row for row (same features, ids and order), as long as
``shard_size`` is a multiple of ``batch_size`` (then every forward pass sees the same batch).

Failure behaviour: every shard is written atomically, so a rank that dies leaves its finished
shards valid; rerunning the same command resumes each rank after its last finished shard.
The manifest and every rank's sub-store record the same ``data_hash`` a plain store records
(:func:`mechunlearn.storage.extract.data_hash`), so a resume with other data (even of the same
length, with the default ids) raises :class:`StoreMismatchError`; a store written by the
previous release, which recorded no hash, is never resumed (its data cannot be verified).
Resuming with another world size raises :class:`WorldSizeMismatchError`. The collectives
(``rank_world``, ``process_group``, ``barrier``, ``all_reduce_moments``, ``distributed_mean_cov``)
live in :mod:`mechunlearn.storage.collectives` and are importable from here.

CLI::

    torchrun --nproc_per_node=2 -m mechunlearn.distributed extract --model DIR \
        --data train.jsonl --site blocks.1.hook_resid_post --position mean --out feats/
    python -m mechunlearn.distributed merge feats/ merged/
    torchrun --nproc_per_node=2 -m mechunlearn.distributed stats feats/ --out stats.pt
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mechunlearn.atomic import atomic_write_json
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, StoreMismatchError
from mechunlearn.features import extract, model_fingerprint
from mechunlearn.sites import Site
from mechunlearn.storage.collectives import (  # noqa: F401 (part of this module's API)
    all_reduce_moments,
    barrier,
    distributed_mean_cov,
    process_group,
    rank_world,
)
from mechunlearn.storage.format import _dtype_name
from mechunlearn.storage.moments import RunningMoments  # noqa: F401 (kept importable here)
from mechunlearn.storage.sharded import (
    FORMAT,
    VERSION,
    ShardedStore,
    WorldSizeMismatchError,  # noqa: F401 (part of this module's API)
    check_resume,
    rank_blocks,
    rank_dir,
    read_manifest,
)
from mechunlearn.storage.store import FeatureStore
from mechunlearn.tokens import Data, TokenBatch

CRASH_ENV = "MECHUNLEARN_CRASH_AFTER_SHARDS"  # fault injection for tests: "RANK:K"
#: what a rank killed midway may leave in a sharded store besides its rank sub-store: the
#: temporary folder of a sub-store being created, a half-written manifest (ours to replace)
SHARDED_PATTERNS = (".rank_*.tmp-*/*", ".manifest.json.*.tmp")


# ------------------------------------------------------------------ sharded computation
def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _rank_dirs_only(world: int) -> Callable[[Path], list[str] | None]:
    """Legacy recogniser of a folder holding only finished rank sub-stores of this run (the
    other ranks were faster than rank 0): their files, or ``None`` if anything else is there."""
    from mechunlearn.ownership import foreign

    names = {rank_dir(r, world) for r in range(world)}

    def listed(folder: Path) -> list[str] | None:
        out: list[str] = []
        for e in folder.iterdir():
            kind, other = (foreign(e) if e.is_dir() and not e.is_symlink() and e.name in names
                           else (None, []))
            if kind != "featurestore" or other:
                return None
            out += [f"{e.name}/{f.relative_to(e)}" for f in e.rglob("*") if not f.is_dir()]
        return out

    return listed


def _hash_items(model: Any, items: Data, ids: Sequence[str], **tok: Any) -> str:
    """``data_hash`` of ``items`` as a plain store records it (``tok``: ``extract``'s token
    options); triples: the (prompt, chosen) and (prompt, rejected) hashes, comma-joined."""
    from mechunlearn.storage.extract import data_hash
    from mechunlearn.tokens import as_token_batch

    def one(x: Data) -> str:
        return data_hash(as_token_batch(model, x, tok.get("padding_side", "right"),
                                        tok.get("attention_mask"), tok.get("response_mask")),
                         ids)

    if isinstance(items, (list, tuple)) and items and isinstance(items[0], tuple) \
            and len(items[0]) == 3:
        return f"{one([(p, c) for p, c, _ in items])},{one([(p, r) for p, _, r in items])}"
    return one(items)


def _raise_on_any_rank(problem: str) -> None:
    """Raise :class:`StoreMismatchError` on every rank if any rank found a ``problem``."""
    got, world = [problem], rank_world()[1]
    if world > 1 and dist.is_initialized():  # (not in tests that simulate ranks)
        got = [""] * world
        dist.all_gather_object(got, problem)
    if any(got):
        raise StoreMismatchError(next(g for g in got if g))


def _check_ranks_agree(want: dict[str, Any]) -> None:
    """Raise on every rank if the ranks disagree on data, model weights, Site or config."""
    rank, world = rank_world()
    if world == 1:
        return
    got: list[Any] = [None] * world
    dist.all_gather_object(got, want)
    for k in want:
        vals = [g[k] for g in got]
        if any(v != vals[0] for v in vals):
            raise StoreMismatchError(
                f"Ranks disagree on {k}: {vals}. Every rank must load identical weights and "
                "data (e.g. a model whose missing head is randomly initialised differs per "
                "process: seed torch before loading it)."
            )


def run_sharded(out: str | os.PathLike[str], ids: Sequence[str], site: Site, fingerprint: str,
                d: int, compute: Callable[[int, int], Tensor], *, shard_size: int = 4096,
                dtype: torch.dtype = torch.float32, kind: str = "activations",
                data: str | None = None, config: dict[str, Any] | None = None) -> ShardedStore:
    """Compute ``compute(start, stop) -> [stop - start, d]`` for this rank's blocks into ``out``.

    Collective: call on every rank with identical arguments. Resumes after each rank's last
    complete shard; returns the complete :class:`ShardedStore` (on every rank).
    ``data``: hash of the samples the rows are computed from (the runners below pass
    :func:`~mechunlearn.storage.extract.data_hash`), recorded in the manifest and in every
    rank's sub-store; ``None`` only when the rows are a function of ``ids`` alone.
    ``config``: JSON settings that change the rows (e.g. the loss), recorded and compared.

    Raises:
        StoreMismatchError: ``out`` holds a store of other data (hash), ids, model, Site,
            shard size, dtype, kind or config, or one written by the previous release (no
            data hash recorded, so it cannot be verified); never resumed.
        WorldSizeMismatchError: ``out`` was started with another number of ranks.
    """
    n = len(ids)
    if n == 0:
        raise EmptyDataError("Nothing to compute: 0 samples.")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}.")
    rank, world = rank_world()
    p = Path(out)
    want = {"format": FORMAT, "version": VERSION, "world_size": world, "n": n,
            "ids_sha256": _ids_digest(ids), "shard_size": int(shard_size),
            "site": site.to_dict(), "fingerprint": fingerprint, "d": int(d),
            "dtype": _dtype_name(dtype), "kind": kind, "data": data, "config": config}
    _check_ranks_agree(want)
    old = read_manifest(p) if p.exists() else None
    if old is not None:
        check_resume(old, want, p)
    elif rank == 0:
        from mechunlearn.outputs import check_destination, output_folder, write_manifest

        ranks = [rank_dir(r, world) for r in range(world)]  # nested outputs of the store
        if p.is_dir() and any(p.iterdir()):  # other ranks' sub-stores only, never user files
            check_destination(p, "sharded-store", legacy=_rank_dirs_only(world))
            atomic_write_json(p / "manifest.json", {**want, "complete": False})
            write_manifest(p, "sharded-store", SHARDED_PATTERNS, nested=ranks)
        else:
            with output_folder(p, "sharded-store", patterns=SHARDED_PATTERNS,
                               nested=ranks) as tmp:
                atomic_write_json(tmp / "manifest.json", {**want, "complete": False})
    barrier()
    sub = FeatureStore.create(p / rank_dir(rank, world), site, fingerprint, d, dtype=dtype,
                              shard_size=shard_size, data=data)
    blocks = rank_blocks(n, shard_size, rank, world)
    done = sub.n_shards
    expect = [i for b in blocks[:done] for i in ids[b * shard_size:(b + 1) * shard_size]]
    problem = ""
    if sub.data_hash != data:
        problem = (f"Sub-store {sub.path} was written from other data (hash {sub.data_hash}) "
                   f"than this run's (hash {data}); resuming would mix their rows. Write to "
                   f"another folder, or delete {p} yourself if you no longer need it.")
    elif done > len(blocks) or sub.ids != expect:
        problem = f"Sub-store {sub.path} holds rows that do not match this run."
    _raise_on_any_rank(problem)  # every rank raises (none is left waiting at a barrier)
    crash = os.environ.get(CRASH_ENV, "")
    for written, b in enumerate(blocks[done:], start=1):
        a, z = b * shard_size, min(n, (b + 1) * shard_size)
        vals = compute(a, z)
        if tuple(vals.shape) != (z - a, d):
            raise ShapeError(f"Block {b} gave shape {tuple(vals.shape)}, expected {(z - a, d)}.")
        sub.append(vals, ids[a:z])
        sub.flush()
        if crash and crash == f"{rank}:{written}":
            os._exit(17)
    barrier()
    if rank == 0:
        atomic_write_json(p / "manifest.json", {**want, "complete": True})
    barrier()
    return ShardedStore.open(p)


def _slice(data: Data, a: int, z: int) -> Data:
    return data[a:z] if isinstance(data, (TokenBatch, Tensor)) else list(data[a:z])


def extract_distributed(model: Any, data: Data, site: Site, out: str | os.PathLike[str], *,
                        ids: Sequence[str] | None = None, batch_size: int = 32,
                        shard_size: int = 4096, dtype: torch.dtype = torch.float32,
                        **extract_kwargs: Any) -> ShardedStore:
    """Data-parallel :func:`~mechunlearn.features.extract` of ``data`` at ``site`` into ``out``.

    ``data``: texts, ``(prompt, response)`` pairs or a :class:`TokenBatch`; every rank passes
    the same data, hashes all of it (``data_hash``, checked on resume) and runs the model on
    its own blocks only. Returns the ordered :class:`ShardedStore` (``[n, d]`` rows, ids
    ``"0".."n-1"`` unless given). Collective: call on every rank. Errors: as
    :func:`run_sharded` (other data in ``out``: :class:`StoreMismatchError`).
    """
    n = len(data)
    id_list = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(id_list) != n:
        raise ShapeError(f"Got {len(id_list)} ids for {n} samples.")
    if site.position == "all":
        raise ConfigError("A store holds one vector per sample; use a pooled Site position.")
    if shard_size % batch_size:
        raise ConfigError(f"shard_size ({shard_size}) must be a multiple of batch_size "
                          f"({batch_size}) so every rank sees the single-process batches.")

    def compute(a: int, z: int) -> Tensor:
        return extract(model, _slice(data, a, z), site, batch_size=batch_size,
                       ids=id_list[a:z], progress=False, **extract_kwargs).values

    dh = _hash_items(model, data, id_list, **extract_kwargs)  # before any forward pass
    d = int(compute(0, 1).shape[1]) if n else 0
    return run_sharded(out, id_list, site, model_fingerprint(model), d, compute,
                       shard_size=shard_size, dtype=dtype, kind="activations", data=dh)


def gradient_features_distributed(model: Any, items: Sequence[Any], site: Site,
                                  out: str | os.PathLike[str], *,
                                  ids: Sequence[str] | None = None, batch_size: int = 16,
                                  shard_size: int = 4096, dtype: torch.dtype = torch.float32,
                                  **grad_kwargs: Any) -> ShardedStore:
    """Data-parallel :func:`~mechunlearn.attribution.gradient_features` into a sharded store.

    Same sharding, resume (data hash) and ordering guarantees as :func:`extract_distributed`,
    and the loss settings and reference model are checked on resume too; ``site`` is
    the activation Site (or, with ``params=[...]`` in ``grad_kwargs``, the label stored with
    the parameter gradients). Rows ``[n, d]``. Collective: call on every rank.
    """
    from mechunlearn.attribution.gradient import gradient_features

    n = len(items)
    id_list = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(id_list) != n:
        raise ShapeError(f"Got {len(id_list)} ids for {n} samples.")
    if shard_size % batch_size:
        raise ConfigError(f"shard_size ({shard_size}) must be a multiple of batch_size "
                          f"({batch_size}).")

    def compute(a: int, z: int) -> Tensor:
        return gradient_features(model, list(items[a:z]), site=site, batch_size=batch_size,
                                 ids=id_list[a:z], **grad_kwargs).values

    dh = _hash_items(model, items, id_list)  # before any backward pass
    ref = grad_kwargs.get("ref_model")
    dflt = inspect.signature(gradient_features).parameters  # the settings that change the rows
    config = {k: grad_kwargs.get(k, dflt[k].default)
              for k in ("loss", "beta", "params", "projection_dim", "seed")}
    config["ref_model"] = None if ref is None else model_fingerprint(ref)
    config = json.loads(json.dumps(config))  # as the manifest stores it (tuples -> lists)
    d = int(compute(0, 1).shape[1]) if n else 0
    kind = "param_gradients" if grad_kwargs.get("params") else "activation_gradients"
    return run_sharded(out, id_list, site, model_fingerprint(model), d, compute,
                       shard_size=shard_size, dtype=dtype, kind=kind, data=dh, config=config)
