"""Deprecated alias of :mod:`mechunlearn.storage.sharded`. Kept for one release; import from the
new path. The alias *is* the new module (``sys.modules`` entry), so attributes set on it, e.g.
by ``monkeypatch``, reach the code that uses them."""

import sys
import warnings

from mechunlearn.storage import sharded as _new

warnings.warn("mechunlearn.sharded_store moved to mechunlearn.storage.sharded; this alias goes away "
              "in the next release.", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _new
