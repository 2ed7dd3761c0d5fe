"""Deprecated alias of :mod:`mechunlearn.studies.counterfactual` (moved there: studies are the only room that may use
the toy world). Kept for one release; import from the new path."""

import warnings

from mechunlearn.studies.counterfactual import *  # noqa: F403
from mechunlearn.studies.counterfactual import __dict__ as _new

warnings.warn("mechunlearn.attribution.counterfactual moved to mechunlearn.studies.counterfactual; this alias goes away in the next release.",
              DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
