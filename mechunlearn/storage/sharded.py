"""A FeatureStore written by several ranks, read as one ordered store.

Layout of a sharded store folder (written by :mod:`mechunlearn.storage.distributed`)::

    manifest.json        format "mechunlearn-sharded-store", world_size, shard_size, n,
                         ids_sha256, data (the plain store's data_hash; absent in the
                         previous release), config, site, fingerprint, d, dtype, kind,
                         complete
    rank_00of02/         an ordinary FeatureStore holding rank 0's shards
    rank_01of02/         ... rank 1's shards

The dataset is cut into contiguous blocks of ``shard_size`` rows; block ``b`` is computed by
rank ``b % world_size`` and is shard ``b // world_size`` of that rank's sub-store (every block
is exactly one shard; only the globally last block may be short). Reading the blocks in
order ``b = 0, 1, ...`` therefore gives the single-process store row for row.
:class:`ShardedStore` is a read-only :class:`~mechunlearn.storage.store.FeatureStore` over those
sub-stores (``iter_shards``, ``ids``, ``load``, ``rows``, ``mean_cov`` all work), and
:func:`merge` writes it out as one plain FeatureStore.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mechunlearn.errors import (
    StoreError,
    StoreMismatchError,
    WorldSizeMismatchError,
)
from mechunlearn.storage.format import FORMAT as STORE_FORMAT
from mechunlearn.storage.format import read_manifest_file
from mechunlearn.storage.store import FeatureStore

FORMAT = "mechunlearn-sharded-store"
VERSION = 1


def rank_dir(rank: int, world: int) -> str:
    """Name of rank ``rank``'s sub-store folder, e.g. ``rank_01of04``."""
    return f"rank_{rank:02d}of{world:02d}"


def n_blocks(n: int, shard_size: int) -> int:
    """Number of ``shard_size``-row blocks covering ``n`` rows."""
    return (n + shard_size - 1) // shard_size


def rank_blocks(n: int, shard_size: int, rank: int, world: int) -> list[int]:
    """Global block indices computed by ``rank`` (``b % world == rank``), in order."""
    return list(range(rank, n_blocks(n, shard_size), world))


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sharded-store manifest at ``path`` (``None`` if there is none)."""
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        return None
    return read_manifest_file(mf, FORMAT, "sharded-store")


def check_resume(old: dict[str, Any], want: dict[str, Any], out: Path) -> None:
    """Refuse to resume the sharded store ``out`` (manifest ``old``) for a run that would
    write ``want``: another data hash, world size, ids, model, Site or config, or a store of
    the previous release (no ``data`` hash: its rows cannot be verified). Raises
    :class:`WorldSizeMismatchError` or :class:`StoreMismatchError` naming ``out`` and what to do.
    """
    todo = (f"Write to another folder (CLI: another --out), or delete {out} yourself if you "
            "no longer need it.")
    if "data" not in old:
        raise StoreMismatchError(
            f"{out} was written by a previous mechunlearn release that did not record a hash of "
            "its data, so this run cannot check that its rows come from the same data: resume "
            f"refused (its finished rows stay readable). {todo}")
    if int(old["world_size"]) != want["world_size"]:
        raise WorldSizeMismatchError(
            f"{out} was started with world_size={old['world_size']} but this run has "
            f"world_size={want['world_size']}. Resume with --nproc_per_node={old['world_size']} "
            "(same total over nodes), or write to a new folder."
        )
    if old["data"] != want["data"]:
        raise StoreMismatchError(
            f"{out} holds rows computed from other data (hash {old['data']}) than this run's "
            f"(hash {want['data']}); resuming would return or mix the old rows. {todo}")
    for k in ("n", "ids_sha256", "shard_size", "site", "fingerprint", "d", "dtype", "kind",
              "config"):
        if old.get(k) != want[k]:
            raise StoreMismatchError(
                f"{out} holds {k}={old.get(k)!r}, not {want[k]!r}: it was written for another "
                f"dataset/model/site/config. {todo}"
            )


class ShardedStore(FeatureStore):
    """Read-only ordered view of the per-rank sub-stores of a sharded store.

    Open with :meth:`open`; it raises :class:`StoreError` naming the unfinished ranks unless
    every rank has written all its shards (rerun the same ``torchrun`` command to resume).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], subs: list[FeatureStore]) -> None:
        world = int(manifest["world_size"])
        size = int(manifest["shard_size"])
        nb = n_blocks(int(manifest["n"]), size)
        shards = []
        for b in range(nb):
            sub = subs[b % world]
            j = b // world
            shards.append({"rank": b % world, "index": j, "n": int(sub._m["shards"][j]["n"])})
        super().__init__(path, {**manifest, "shards": shards})
        self._subs = subs

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = False,
             check_reads: bool = True) -> ShardedStore:
        """Open a complete sharded store at ``path``.

        Every shard read is checked against its sha256 (``check_reads``, see
        :meth:`FeatureStore.open`); ``verify=True`` also hashes every shard now.
        """
        p = Path(path)
        m = read_manifest(p)
        if m is None:
            raise StoreError(f"No sharded store at {p} (missing manifest.json).")
        world, size, n = int(m["world_size"]), int(m["shard_size"]), int(m["n"])
        subs: list[FeatureStore] = []
        missing: list[str] = []
        for r in range(world):
            want = len(rank_blocks(n, size, r, world))
            sp = p / rank_dir(r, world)
            sub = (FeatureStore.open(sp, verify=verify, check_reads=check_reads)
                   if (sp / "manifest.json").is_file() else None)
            have = 0 if sub is None else sub.n_shards
            if have != want:
                missing.append(f"rank {r}: {have}/{want} shards")
            subs.append(sub)  # type: ignore[arg-type]
        if missing:
            raise StoreError(
                f"Sharded store at {p} is incomplete ({'; '.join(missing)}); rerun the same "
                f"torchrun command with {world} processes to resume."
            )
        return cls(p, m, subs)

    @property
    def world_size(self) -> int:
        """Number of ranks that wrote the store."""
        return int(self._m["world_size"])

    def _read(self, i: int) -> tuple[Tensor, list[str]]:
        sh = self._m["shards"][i]
        return self._subs[sh["rank"]]._read(sh["index"])

    def append(self, values: Tensor, ids: Sequence[str]) -> None:
        """Not supported: a sharded store is written only by the distributed runners."""
        raise StoreError("ShardedStore is read-only; merge() it into a FeatureStore to extend.")

    def flush(self) -> None:
        """Nothing to flush (read-only)."""


def open_store(path: str | os.PathLike[str], verify: bool = False,
               check_reads: bool = True) -> FeatureStore:
    """Open a plain :class:`FeatureStore` or a :class:`ShardedStore`, whichever is at ``path``
    (``verify``/``check_reads`` as in :meth:`FeatureStore.open`)."""
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        raise StoreError(f"No store at {path} (missing manifest.json).")
    fmt = read_manifest_file(mf, None, "store").get("format")
    if fmt == FORMAT:
        return ShardedStore.open(path, verify=verify, check_reads=check_reads)
    if fmt == STORE_FORMAT:
        return FeatureStore.open(path, verify=verify, check_reads=check_reads)
    raise StoreError(f"{mf} has unknown format {fmt!r}.")


def merge(src: str | os.PathLike[str] | FeatureStore, dst: str | os.PathLike[str]) -> FeatureStore:
    """Copy a (sharded) store into one plain :class:`FeatureStore` at ``dst``, in global order.

    Resumable: shards already in ``dst`` are skipped once their ids and values are checked
    equal to the source's. Shards keep their sizes, so the result is file-for-file what a
    single-process run would have written; it records the source's data hash.

    Raises:
        StoreMismatchError: ``dst`` holds a store of other data (another data hash, more rows,
            or a shard whose ids or values differ from the source's): it is never extended.
    """
    import torch

    store = src if isinstance(src, FeatureStore) else open_store(src)
    out = FeatureStore.create(dst, store.site, store.fingerprint, store.d, dtype=store.dtype,
                              shard_size=int(store._m["shard_size"]), data=store.data_hash)
    done = out.n_shards
    todo = f"Write to another folder, or delete {dst} yourself if you no longer need it."
    if done and (out.data_hash != store.data_hash or done > store.n_shards):
        raise StoreMismatchError(
            f"Merge target {dst} holds {len(out)} rows of other data (hash {out.data_hash}) "
            f"than {store.path} ({len(store)} rows, hash {store.data_hash}). {todo}")
    for i, (vals, ids) in enumerate(store.iter_shards()):
        if i < done:
            have, have_ids = out._read(i)
            if have_ids != list(ids) or not torch.equal(have, vals):
                raise StoreMismatchError(
                    f"Merge target {dst} holds shard {i} with other ids or values; it belongs "
                    f"to another store. {todo}")
            continue
        out.append(vals, ids)
        out.flush()
    return out
