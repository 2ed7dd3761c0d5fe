"""Deprecated alias of :mod:`mechunlearn.robustness.relearn` (moved there: the relearning
attack is one of the robustness checks run on every edit). Kept for one release; import from
the new path."""

import sys
import warnings

from mechunlearn.robustness.relearn import *  # noqa: F403
from mechunlearn.robustness.relearn import __dict__ as _new


def _importer() -> str:
    """``__name__`` of the module whose import statement loaded this one."""
    f = sys._getframe(2)  # 0: here, 1: this module, 2+: the import machinery
    while f is not None and f.f_code.co_filename.startswith("<frozen importlib"):
        f = f.f_back
    return f.f_globals.get("__name__", "") if f is not None else ""


# mechunlearn.unlearn's own re-export is not the user's import: warn only for the old path
if _importer() != "mechunlearn.unlearn":
    warnings.warn("mechunlearn.unlearn.attack moved to mechunlearn.robustness.relearn; this "
                  "alias goes away in the next release.", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
