"""Deprecated alias of :mod:`mechunlearn.studies.demo` (moved there: studies are the only room that may use
the toy world). Kept for one release; import from the new path."""

import warnings

from mechunlearn.studies.demo import *  # noqa: F403
from mechunlearn.studies.demo import __dict__ as _new

warnings.warn("mechunlearn.demo moved to mechunlearn.studies.demo; this alias goes away in the next release.",
              DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
