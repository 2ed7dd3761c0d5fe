"""Deprecated alias of :mod:`mechunlearn.studies.compare_edits` (moved there: studies are the only room that may use
the toy world). Kept for one release; import from the new path."""

import warnings

from mechunlearn.studies.compare_edits import *  # noqa: F403
from mechunlearn.studies.compare_edits import __dict__ as _new

warnings.warn("mechunlearn.unlearn.compare moved to mechunlearn.studies.compare_edits; this alias goes away in the next release.",
              DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
