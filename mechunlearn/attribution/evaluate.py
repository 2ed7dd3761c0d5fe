"""Deprecated alias of :mod:`mechunlearn.studies.attribution_eval` (moved there: studies are the only room that may use
the toy world). Kept for one release; import from the new path."""

import warnings

from mechunlearn.studies.attribution_eval import *  # noqa: F403
from mechunlearn.studies.attribution_eval import __dict__ as _new

warnings.warn("mechunlearn.attribution.evaluate moved to mechunlearn.studies.attribution_eval; this alias goes away in the next release.",
              DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
