"""Features of the chosen and rejected responses of preference pairs, optionally cached.

Items are ``(prompt, sep + response)``, tokenized by :func:`~mechunlearn.seal.encode.encode_items`
(left truncation to ``max_length``), run in length-sorted batches (less padding), and returned
in the input order. With ``cache_dir`` the features go to one
:class:`~mechunlearn.store.FeatureStore` per Site under
``cache_dir/<model fingerprint>/<site>-L<max_length>-<side>``; a later call with the same
model, pairs and settings loads them in seconds instead of running the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechunlearn.errors import ConfigError, EmptyDataError, StoreError
from mechunlearn.features import Features, extract, model_fingerprint
from mechunlearn.seal.data import PreferencePair
from mechunlearn.seal.encode import encode_items, length_order
from mechunlearn.sites import Site

SIDES = ("chosen", "rejected")


def item_features(body: Any, items: Sequence[tuple[str, str]], sites: Sequence[Site],
                  ids: Sequence[str], max_length: int | None = 128, batch_size: int = 32,
                  progress: bool | None = None) -> dict[Site, Features]:
    """Features ``[n, d]`` per Site of ``(prompt, response)`` items, in input order."""
    if len(items) == 0:
        raise EmptyDataError("item_features() got no items.")
    tok = getattr(body, "tokenizer", None)
    if tok is None:
        raise ConfigError("The reward-model body has no tokenizer; boot it with load_bridge().")
    tb = encode_items(tok, items, max_length)
    order = length_order(tb)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(len(order))
    sorted_ids = [ids[int(i)] for i in order]
    out = extract(body, tb[order], list(sites), batch_size=batch_size, ids=sorted_ids,
                  progress=progress)
    return {s: f.subset(inv) for s, f in out.items()}


def _site_slug(site: Site) -> str:
    return re.sub(r"[^A-Za-z0-9_.@#-]+", "_", site.key)


def pair_features(body: Any, pairs: Sequence[PreferencePair], sites: Site | Sequence[Site],
                  max_length: int | None = 128, batch_size: int = 32, sep: str = " ",
                  cache_dir: str | os.PathLike[str] | None = None,
                  progress: bool | None = None,
                  ) -> dict[str, dict[Site, Features]]:
    """Features of every pair's chosen and rejected response at each Site.

    Args:
        body: a TransformerBridge with a tokenizer.
        pairs: preference pairs (their ``id`` names the rows: ``"<id>:c"`` / ``"<id>:r"``).
        sites: one or more pooled Sites (read in one forward pass).
        max_length: tokens kept per item (the end of the dialogue is kept).
        cache_dir: folder for FeatureStores (created); reused when model, pairs, Site and
            ``max_length`` match.

    Returns:
        ``{"chosen": {Site: Features}, "rejected": {Site: Features}}``, rows in pair order.
    """
    site_list = [sites] if isinstance(sites, Site) else list(sites)
    if not site_list:
        raise ConfigError("pair_features() needs at least one Site.")
    if len(pairs) == 0:
        raise EmptyDataError("pair_features() got no pairs.")
    for s in site_list:
        if s.position == "all":
            raise ConfigError(f"Site {s.key}: reward features need a pooled position, not 'all'.")
    result: dict[str, dict[Site, Features]] = {}
    fp = model_fingerprint(body) if cache_dir is not None else ""
    for side, tag in zip(SIDES, ("c", "r")):
        ids = [f"{p.id}:{tag}" for p in pairs]
        items = [p.items(sep)[0 if side == "chosen" else 1] for p in pairs]
        paths = {}
        cached: dict[Site, Features] = {}
        if cache_dir is not None:
            root = Path(cache_dir) / fp
            for s in site_list:
                paths[s] = root / f"{_site_slug(s)}-L{max_length}-sep{len(sep)}-{side}"
                got = _try_load(paths[s], ids)
                if got is not None:
                    cached[s] = got
        todo = [s for s in site_list if s not in cached]
        if todo:
            fresh = item_features(body, items, todo, ids, max_length, batch_size, progress)
            for s, f in fresh.items():
                if cache_dir is not None:
                    _save(paths[s], f)
                cached[s] = f
        result[side] = {s: cached[s] for s in site_list}
    return result


def _try_load(path: Path, ids: list[str]) -> Features | None:
    from mechunlearn.store import FeatureStore

    if not (path / "manifest.json").is_file():
        return None
    try:
        store = FeatureStore.open(path)
        if list(store.ids) != ids:
            return None
        return store.load()
    except StoreError:
        return None


def _save(path: Path, f: Features) -> None:
    import shutil

    from mechunlearn.store import FeatureStore

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = FeatureStore.create(path, f.site, f.fingerprint, f.d)
    store.append(f.values, list(f.ids))
    store.flush()
