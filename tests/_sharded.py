"""``sharded(monkeypatch, path, site)``: a complete sharded store written in-process by
simulated ranks, for the output-safety tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mechunlearn.storage.distributed as D
from mechunlearn.sites import Site
from mechunlearn.storage.sharded import ShardedStore


def sharded(monkeypatch: pytest.MonkeyPatch, path: Path, site: Site, n: int = 10,
            world: int = 2) -> ShardedStore:
    """A complete sharded store of ``n`` rows ``[i, i, i]`` written by ``world`` simulated
    ranks (rank 0 last; barriers and the rank agreement check patched out)."""
    monkeypatch.setattr(D, "barrier", lambda: None)
    monkeypatch.setattr(D, "_check_ranks_agree", lambda want: None)
    ids = [f"id{i}" for i in range(n)]
    store = None
    for rank in reversed(range(world)):
        monkeypatch.setattr(D, "rank_world", lambda r=rank: (r, world))
        try:
            store = D.run_sharded(path, ids, site, "fp", 3,
                                  lambda a, z: torch.arange(a, z).float()[:, None].repeat(1, 3),
                                  shard_size=3)
        except Exception:  # noqa: BLE001 (the other ranks' stores are incomplete until rank 0)
            store = None
    monkeypatch.undo()
    assert isinstance(store, ShardedStore)
    return store
