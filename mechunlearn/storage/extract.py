"""Extract features into a FeatureStore, resumably (the disk-backed form of ``extract``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mechunlearn.errors import ConfigError, ShapeError, StoreMismatchError
from mechunlearn.sites import Site
from mechunlearn.storage.store import FeatureStore
from mechunlearn.tokens import Data, TokenBatch


def extract_to_store(model: Any, data: Data, site: Site, path: str | os.PathLike[str],
                     batch_size: int = 32, shard_size: int = 4096,
                     ids: Sequence[str] | None = None, progress: bool | None = None,
                     **extract_kwargs: Any) -> FeatureStore:
    """Extract features of ``data`` at ``site`` into a store at ``path``, resumably.

    If the folder already holds a compatible store, the rows it has are checked against
    the expected ids and skipped; extraction continues after the last complete shard.
    ``data`` is anything :func:`mechunlearn.extract` accepts; ``model`` a ``TransformerBridge``.
    Rows are ``[n, d]`` float32 at a pooled ``site`` (``position="all"`` raises
    :class:`ConfigError`); ``ids`` default to ``"0".."n-1"``. Raises :class:`ShapeError` if
    ``ids`` and ``data`` differ in length and :class:`StoreMismatchError` if the folder holds
    another model's, Site's or dataset's rows (the store records :func:`data_hash` of the
    data it was started with; a resume must pass the same samples and ids).
    """
    from mechunlearn.features import extract, model_fingerprint
    from mechunlearn.tokens import as_token_batch

    if site.position == "all":
        raise ConfigError("FeatureStore holds one vector per sample; use a pooled Site position.")
    tb = as_token_batch(model, data, extract_kwargs.pop("padding_side", "right"),
                        extract_kwargs.pop("attention_mask", None),
                        extract_kwargs.pop("response_mask", None))
    n = len(tb)
    id_list = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(id_list) != n:
        raise ShapeError(f"Got {len(id_list)} ids for {n} samples.")
    site.resolve(model)
    d = _site_dim(model, site, tb)
    dh = data_hash(tb, id_list)
    store = FeatureStore.create(path, site, model_fingerprint(model), d, shard_size=shard_size,
                                data=dh)
    done = len(store)
    if done > n or store.ids != id_list[:done]:
        raise StoreMismatchError(
            f"Store at {path} holds {done} rows whose ids do not match the first {done} of "
            "this data; it belongs to another dataset. Use another folder."
        )
    if store.data_hash not in (None, dh):
        raise StoreMismatchError(
            f"Store at {path} was extracted from other data (hash {store.data_hash}) than "
            f"this data (hash {dh}); resuming would mix their rows. Use another folder, or the "
            "data the store was started with.")
    step = max(batch_size, shard_size)
    for start in range(done, n, step):
        stop = min(n, start + step)
        f = extract(model, tb[start:stop], site, batch_size=batch_size,
                    ids=id_list[start:stop], progress=progress, **extract_kwargs)
        store.append(f.values, f.ids)
    store.flush()
    return store


def data_hash(tb: TokenBatch, ids: Sequence[str]) -> str:
    """``"sha256:<16 hex>"`` of the samples' ids, real tokens and response masks (padding
    zeroed), so the same data file tokenised by the same tokenizer gives the same hash."""
    import hashlib
    import json

    am = tb.attention_mask.bool()
    h = hashlib.sha256(json.dumps(list(ids)).encode())
    h.update(str(tuple(tb.input_ids.shape)).encode())
    h.update((tb.input_ids.long() * am).numpy().tobytes())
    h.update(am.numpy().tobytes())
    if tb.response_mask is not None:
        h.update((tb.response_mask.bool() & am).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _site_dim(model: Any, site: Site, tb: TokenBatch) -> int:
    from mechunlearn.features import extract

    return extract(model, tb[0:1], site, batch_size=1, progress=False).d
