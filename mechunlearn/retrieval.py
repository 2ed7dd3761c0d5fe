"""Deprecated alias of :mod:`mechunlearn.storage.retrieval` (moved into the ``storage`` package;
``FaissIndex`` is now in :mod:`mechunlearn.storage.faiss_index`, ``attribute_store`` in
:mod:`mechunlearn.storage.attribute`). Kept for one release; import from the new paths."""

import warnings

from mechunlearn.storage import attribute as _attribute
from mechunlearn.storage import faiss_index as _faiss_index
from mechunlearn.storage import retrieval as _retrieval

warnings.warn("mechunlearn.retrieval moved to mechunlearn.storage (retrieval, faiss_index, attribute); "
              "this alias goes away in the next release.", DeprecationWarning, stacklevel=2)
for _m in (_retrieval, _faiss_index, _attribute):
    globals().update({k: v for k, v in vars(_m).items() if not k.startswith("__")})
