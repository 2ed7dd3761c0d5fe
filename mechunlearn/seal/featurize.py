"""Features of the chosen and rejected responses of preference pairs, optionally cached.

Items are ``(prompt, sep + response)``, tokenized by :func:`~mechunlearn.seal.encode.encode_items`
(left truncation to ``max_length``), run in length-sorted batches (less padding), and returned
in the input order. With ``cache_dir`` the features go to one
:class:`~mechunlearn.storage.store.FeatureStore` per Site under
``cache_dir/<model fingerprint>/<site>-L<max_length>-sep<k>-<side>-<hash of the pair ids>``; a
later call with the same model, pairs and settings loads them in seconds instead of running
the model, and different subsets of pairs never overwrite each other's stores.
"""

from __future__ import annotations

import hashlib
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
from mechunlearn.tokens import model_tokenizer

SIDES = ("chosen", "rejected")


def item_features(body: Any, items: Sequence[tuple[str, str]], sites: Sequence[Site],
                  ids: Sequence[str], max_length: int | None = 128, batch_size: int = 32,
                  progress: bool | None = None) -> dict[Site, Features]:
    """Features ``[n, d]`` per Site of ``(prompt, response)`` items, in input order."""
    if len(items) == 0:
        raise EmptyDataError("item_features() got no items.")
    tok = model_tokenizer(body)
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


def cached_item_features(body: Any, items: Sequence[tuple[str, str]], sites: Sequence[Site],
                         ids: Sequence[str], max_length: int | None, batch_size: int,
                         cache_dir: str | os.PathLike[str] | None, tag: str,
                         progress: bool | None = None) -> dict[Site, Features]:
    """:func:`item_features` through one FeatureStore per Site at
    ``cache_dir/<fingerprint>/<site>-L<max_length>-<tag>`` (no cache when ``cache_dir`` is
    None). A store is reused only if its ids equal ``ids`` (same rows, same order)."""
    if cache_dir is None:
        return item_features(body, items, sites, ids, max_length, batch_size, progress)
    root = Path(cache_dir).expanduser() / model_fingerprint(body)
    paths = {s: root / f"{_site_slug(s)}-L{max_length}-{tag}" for s in sites}
    out: dict[Site, Features] = {}
    for s in sites:
        got = _try_load(paths[s], list(ids))
        if got is not None:
            out[s] = got
    todo = [s for s in sites if s not in out]
    if todo:
        for s, f in item_features(body, items, todo, ids, max_length, batch_size,
                                  progress).items():
            _save(paths[s], f)
            out[s] = f
    return {s: out[s] for s in sites}


def content_ids(items: Sequence[tuple[str, str]]) -> list[str]:
    """Unique ids from the content of ``(prompt, response)`` items (repeats get ``-k``)."""
    seen: dict[str, int] = {}
    out = []
    for p, r in items:
        h = hashlib.sha256(f"{p}\x1f{r}".encode()).hexdigest()[:16]
        k = seen.get(h, 0)
        seen[h] = k + 1
        out.append(h if k == 0 else f"{h}-{k}")
    return out


def ids_tag(ids: Sequence[str]) -> str:
    """Short hash naming a list of ids (for cache folder names)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


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
        cache_dir: folder for FeatureStores (created); reused when model, pairs (ids, in
            order), Site, ``max_length`` and ``sep`` match.

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
    for k, (side, tag) in enumerate(zip(SIDES, ("c", "r"))):
        ids = [f"{p.id}:{tag}" for p in pairs]
        items = [p.items(sep)[k] for p in pairs]
        result[side] = cached_item_features(body, items, site_list, ids, max_length, batch_size,
                                            cache_dir, f"sep{len(sep)}-{side}-{ids_tag(ids)}",
                                            progress)
    return result


def _try_load(path: Path, ids: list[str]) -> Features | None:
    from mechunlearn.storage.store import FeatureStore

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
    """Write a cache store; a stale store of ours at ``path`` is replaced, nothing else."""
    from mechunlearn.outputs import output_folder
    from mechunlearn.storage.store import STORE_PATTERNS, FeatureStore, legacy_store_files

    with output_folder(path, "featurestore", patterns=STORE_PATTERNS,
                       legacy=legacy_store_files) as tmp:
        store = FeatureStore.create(tmp, f.site, f.fingerprint, f.d)  # tmp is empty
        store.append(f.values, list(f.ids))
        store.flush()
