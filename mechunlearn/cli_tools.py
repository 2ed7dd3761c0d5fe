"""Deprecated alias of :mod:`mechunlearn.cli` (the commands moved into the package
``mechunlearn/cli/``, one module per command group). Kept for one release."""

import warnings

from mechunlearn.cli import *  # noqa: F403
from mechunlearn.cli import __dict__ as _new

warnings.warn("mechunlearn.cli_tools moved into the package mechunlearn.cli; this alias goes "
              "away in the next release.", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
