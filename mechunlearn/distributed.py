"""Deprecated alias of :mod:`mechunlearn.storage.distributed` (the collectives are in
:mod:`mechunlearn.storage.collectives` and importable from there). Kept for one release;
import from the new path. The alias *is* the new module (``sys.modules`` entry), so
attributes set on it, e.g. ``monkeypatch.setattr(D, "rank_world", ...)``, reach
``run_sharded``.

``python -m mechunlearn.distributed`` (and ``torchrun -m mechunlearn.distributed``) still runs
the distributed command line.
"""

import sys
import warnings

from mechunlearn.storage import distributed as _new

if __name__ == "__main__":  # pragma: no cover - exercised through torchrun in tests
    from mechunlearn.cli.distributed import main

    raise SystemExit(main())

warnings.warn("mechunlearn.distributed moved to mechunlearn.storage.distributed; this alias goes "
              "away in the next release.", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _new
