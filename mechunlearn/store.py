"""Deprecated alias of :mod:`mechunlearn.storage.store` (moved into the ``storage`` package;
``RunningMoments`` is now in :mod:`mechunlearn.storage.moments`, ``extract_to_store`` in
:mod:`mechunlearn.storage.extract`). Kept for one release; import from the new paths."""

import warnings

from mechunlearn.storage import extract as _extract
from mechunlearn.storage import moments as _moments
from mechunlearn.storage import store as _store

warnings.warn("mechunlearn.store moved to mechunlearn.storage (store, moments, extract); this alias "
              "goes away in the next release.", DeprecationWarning, stacklevel=2)
for _m in (_store, _moments, _extract):
    globals().update({k: v for k, v in vars(_m).items() if not k.startswith("__")})
