"""Deprecated alias of :mod:`mechunlearn.data` (renamed: ``datasets`` shadowed Hugging Face's
package of that name). Kept for one release; import from the new path. The alias *is* the new
module (``sys.modules`` entry)."""

import sys
import warnings

from mechunlearn import data as _new

warnings.warn("mechunlearn.datasets was renamed mechunlearn.data; this alias goes away in the next "
              "release.", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _new
