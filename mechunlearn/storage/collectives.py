"""``torch.distributed`` plumbing for the data-parallel runners: rank and world, the process
group, barriers, and streaming moments reduced across ranks (run under ``torchrun``; without
it every function acts as rank 0 of 1)."""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from mechunlearn.errors import EmptyDataError
from mechunlearn.storage.moments import RunningMoments
from mechunlearn.storage.store import FeatureStore


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout_s: float = 1800.0,
                  close_wait_s: float = 60.0) -> Iterator[tuple[int, int]]:
    """Join the ``torchrun`` process group if launched by it; yields ``(rank, world)``.

    ``backend`` defaults to NCCL when CUDA is available, else gloo. Outside torchrun (no
    ``WORLD_SIZE`` > 1) nothing is initialised. A group created here is destroyed on exit,
    before the interpreter shuts down (a gloo group left to interpreter finalisation can abort
    the process with "terminate called without an active exception").

    On a normal exit every rank first meets at a barrier, so no rank closes its connections
    while another is still finishing its last collective. Then the ranks destroy the group
    **one after another**, highest rank first, each waiting (on the rendezvous key-value
    store, not on the group) until the rank above has finished, at most ``close_wait_s``
    seconds: two ranks never tear down the two ends of a connection at the same time (a
    2-rank gloo run aborted with that message once in CI during teardown, after all its work
    and with the barrier in place). After an error the group is destroyed at once (the other
    ranks may never reach the barrier) and the error propagates.
    """
    global _GENERATION
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        be = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if be == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(be, timeout=datetime.timedelta(seconds=timeout_s))
        created = True
    if not created:
        yield rank_world()
        return
    _GENERATION += 1  # the same count on every rank: groups are created collectively
    try:
        yield rank_world()
        dist.barrier()  # normal exit: every rank is done with the group before any tears down
        _destroy_in_turn(f"mechunlearn/closed/{_GENERATION}", close_wait_s)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


_GENERATION = 0  # groups this process created with process_group (keys of their teardown)


def _destroy_in_turn(prefix: str, wait_s: float) -> None:
    """Destroy the default group rank by rank, highest first (see :func:`process_group`).

    Rank ``r`` waits for key ``{prefix}/{r + 1}`` in the group's key-value store, destroys its
    group, then sets ``{prefix}/{r}``. If the store cannot be used, or the rank above does not
    answer within ``wait_s`` seconds, the rank destroys its group anyway, with a warning:
    teardown never hangs and never fails after the work is done.
    """
    rank, world = rank_world()
    try:
        store = dist.distributed_c10d._get_default_store()
        if rank < world - 1:
            store.wait([f"{prefix}/{rank + 1}"], datetime.timedelta(seconds=wait_s))
    except Exception as e:  # noqa: BLE001 - a teardown aid, never a reason to fail
        warnings.warn(f"process_group: rank {rank} did not see rank {rank + 1} close the "
                      f"group first ({type(e).__name__}: {e}); closing it now.", stacklevel=3)
        store = None
    dist.destroy_process_group()
    if store is not None:
        with contextlib.suppress(Exception):
            store.set(f"{prefix}/{rank}", "1")


def barrier() -> None:
    """``dist.barrier()`` when distributed, else nothing."""
    if rank_world()[1] > 1:
        dist.barrier()


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ statistics across ranks
def all_reduce_moments(stats: RunningMoments) -> RunningMoments:
    """Combine every rank's :class:`RunningMoments` into the global one (on every rank).

    Three float64 ``all_reduce`` sums: the counts ``n_r``, the sums ``n_r * mean_r`` and the
    co-moments ``M2_r + n_r (mean_r - mean)(mean_r - mean)^T`` (exact pooled formula).
    Returns a new accumulator; ``stats`` is untouched. Without a process group, a copy.
    """
    out = RunningMoments(stats.mean.shape[0])
    if rank_world()[1] == 1:
        out.merge(stats)
        return out
    dev = _device()
    n = torch.tensor([float(stats.n)], dtype=torch.float64, device=dev)
    dist.all_reduce(n)
    total = int(round(float(n.item())))
    if total == 0:
        return out
    s = (stats.mean * stats.n).to(dev)
    dist.all_reduce(s)
    mean = s / total
    delta = stats.mean.to(dev) - mean
    m2 = stats.m2.to(dev) + torch.outer(delta, delta) * stats.n
    dist.all_reduce(m2)
    out.n, out.mean, out.m2 = total, mean.cpu(), m2.cpu()
    return out


def distributed_mean_cov(store: FeatureStore) -> tuple[Tensor, Tensor, int]:
    """Mean ``[d]``, covariance ``[d, d]`` (float64, ddof=1) and count of a (sharded) store.

    Each rank streams shards ``i % world == rank`` (for a :class:`ShardedStore` written with the
    same world size: exactly its own sub-store), then :func:`all_reduce_moments`. Equals
    ``store.mean_cov()`` to float64 rounding. Call on every rank.
    """
    rank, world = rank_world()
    stats = RunningMoments(store.d)
    for i in range(rank, store.n_shards, world):
        stats.update(store._read(i)[0])
    tot = all_reduce_moments(stats)
    if tot.n == 0:
        raise EmptyDataError(f"Store at {store.path} is empty.")
    return tot.mean, tot.cov(), tot.n
