"""Features on disk and at scale: one room for everything that reads or writes a store.

| module | idea |
|---|---|
| :mod:`~mechunlearn.storage.format` | the manifest format, dtypes and file patterns; one manifest reader |
| :mod:`~mechunlearn.storage.store` | :class:`FeatureStore` (safetensors shards + manifest, atomic, checked reads) |
| :mod:`~mechunlearn.storage.moments` | :class:`RunningMoments` (streaming float64 mean / covariance) |
| :mod:`~mechunlearn.storage.extract` | :func:`extract_to_store` (resumable extraction) |
| :mod:`~mechunlearn.storage.sharded` | :class:`ShardedStore` over per-rank sub-stores, :func:`open_store`, :func:`merge` |
| :mod:`~mechunlearn.storage.collectives` | rank/world, process group, barrier, moments reduced across ranks |
| :mod:`~mechunlearn.storage.distributed` | data-parallel extraction and gradients (``torchrun``) |
| :mod:`~mechunlearn.storage.retrieval` | exact streaming top-k |
| :mod:`~mechunlearn.storage.faiss_index` | optional approximate top-k (faiss) |
| :mod:`~mechunlearn.storage.attribute` | convex attribution over a store |

The old paths ``mechunlearn.store``, ``mechunlearn.sharded_store``, ``mechunlearn.retrieval``
and ``mechunlearn.distributed`` are deprecation aliases for one release.
"""

from mechunlearn.storage.attribute import attribute_store
from mechunlearn.storage.extract import extract_to_store
from mechunlearn.storage.faiss_index import FaissIndex
from mechunlearn.storage.moments import RunningMoments
from mechunlearn.storage.retrieval import TopK, topk
from mechunlearn.storage.sharded import ShardedStore, merge, open_store
from mechunlearn.storage.store import FeatureStore

__all__ = ["FaissIndex", "FeatureStore", "RunningMoments", "ShardedStore", "TopK",
           "attribute_store", "extract_to_store", "merge", "open_store", "topk"]
