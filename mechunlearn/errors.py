"""One error family for mechunlearn.

Every error raised for bad *user input* is a :class:`MechUnlearnError`. Messages name the
offending input, its shape or value, and what was expected, so the fix is obvious from the
message alone. Subclasses also inherit from the closest built-in exception (``KeyError``,
``ValueError``, ...) so generic ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MechUnlearnError(Exception):
    """Base class of every error mechunlearn raises on purpose."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class UnknownHookError(MechUnlearnError, KeyError):
    """A hook name that the model does not have."""

    def __init__(self, name: str, available: Iterable[str], n: int = 5) -> None:
        avail = sorted(set(available))
        close = difflib.get_close_matches(name, avail, n=n, cutoff=0.5)
        hint = f" Closest real hook names: {close}." if close else ""
        layers = sorted({a.split(".")[1] for a in avail if a.startswith("blocks.")}, key=int)
        extra = f" The model has blocks {layers[0]}..{layers[-1]}." if layers else ""
        super().__init__(
            f"Unknown hook name {name!r}: the model has no such hook point.{hint}{extra} "
            "List them with `sorted(model.hook_dict)`."
        )
        self.name = name
        self.suggestions = close


class ShapeError(MechUnlearnError, ValueError):
    """A tensor/array with the wrong number of dimensions or the wrong size."""


class EmptyDataError(MechUnlearnError, ValueError):
    """An input that must contain at least one sample (or a minimum number) is empty."""


class NonFiniteError(MechUnlearnError, ValueError):
    """NaN or inf values where finite numbers are required."""


class DTypeError(MechUnlearnError, TypeError):
    """An unsupported dtype."""


class ConfigError(MechUnlearnError, ValueError):
    """An invalid option or combination of options."""


class HookNotFiredError(MechUnlearnError, RuntimeError):
    """A hook added by :func:`mechunlearn.apply` never ran inside its block."""


class StoreError(MechUnlearnError, OSError):
    """A FeatureStore problem: missing, corrupt or foreign files."""


class FeatureMismatchError(MechUnlearnError, ValueError):
    """Features, directions or weights from another model, Site, dtype or dimension than the
    operation expects (the one mismatch concept; the names below are its special cases)."""


class StoreMismatchError(StoreError, FeatureMismatchError):
    """Features from a different model, site, dtype or dimension than the store holds."""


class WorldSizeMismatchError(StoreMismatchError):
    """A sharded store is resumed with a different number of ranks than it was started with."""


class SiteMismatchError(FeatureMismatchError, ConfigError):
    """Features read at a different Site than the one a reward model or probe expects."""


class BodyMismatchError(FeatureMismatchError, ConfigError):
    """Features or weights from a different model body (weights fingerprint) than expected."""


class DataFileError(ConfigError):
    """A data file that cannot be read or has a malformed line."""


class MalformedRecordError(MechUnlearnError, ValueError):
    """A preference record that cannot be parsed (raised only under ``strict=True``).

    Attributes:
        line: 1-based line number of the offending record in the file (0 if not from a file).
        reason: short machine-readable reason, e.g. ``"no_assistant_turn"``.
    """

    def __init__(self, message: str, line: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.reason = reason


class RankDeficientError(ShapeError):
    """A set of directions whose span has lower dimension than the number of directions."""


class JudgeError(MechUnlearnError, RuntimeError):
    """A judge (``response -> is bad``) that raised or returned something other than a bool."""


class NoEvidenceWarning(UserWarning):
    """A fitted direction did not beat its permutation null on held-out data."""


class FastPathMismatchWarning(UserWarning):
    """A fast path disagreed with its reference path and was switched off."""


class ArchitectureError(MechUnlearnError, NotImplementedError):
    """A model whose architecture an operation does not know how to handle."""


class LayoutError(MechUnlearnError, ValueError):
    """A hook whose activation layout an operation does not support (e.g. token ids)."""


class ModelMismatchError(MechUnlearnError, ValueError):
    """Directions or interventions fitted on one model applied to another (strict mode)."""


class ModelMismatchWarning(UserWarning):
    """Directions or interventions fitted on one model applied to another (default mode)."""


class OutputExistsError(MechUnlearnError, FileExistsError):
    """An output folder that already holds files mechunlearn did not write (never replaced)."""


class OutputPathError(MechUnlearnError, OSError):
    """An output path that cannot be used: the working directory or one of its parents, ``/``,
    the home folder, an existing file, a symbolic link, or a path under a regular file."""


def check_finite(name: str, x: object) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` if tensor/array ``x`` has NaN or inf."""
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n = int(bad.sum())
            raise NonFiniteError(
                f"{name} (shape {tuple(x.shape)}) contains {n} NaN/inf value(s); "
                "clean or drop those samples first."
            )
    else:
        arr = np.asarray(x)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            n = int((~np.isfinite(arr)).sum())
            raise NonFiniteError(
                f"{name} (shape {arr.shape}) contains {n} NaN/inf value(s); "
                "clean or drop those samples first."
            )
