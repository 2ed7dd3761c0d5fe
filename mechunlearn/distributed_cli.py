"""Deprecated alias of :mod:`mechunlearn.cli.distributed` (``mechunlearn distributed ...``
in the one typer app). Kept for one release; ``main(argv)`` works as before."""

import warnings

from mechunlearn.cli.distributed import *  # noqa: F403
from mechunlearn.cli.distributed import __dict__ as _new

warnings.warn("mechunlearn.distributed_cli moved to mechunlearn.cli.distributed; this alias "
              "goes away in the next release.", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in _new.items() if not k.startswith("__")})
