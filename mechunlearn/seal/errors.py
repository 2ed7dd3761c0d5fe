"""Errors specific to the SEAL diagnostics (subclasses of the mechunlearn error family)."""

from __future__ import annotations

from mechunlearn.errors import ConfigError, MechUnlearnError


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


class SiteMismatchError(ConfigError):
    """Features read at a different Site than the one a reward model or probe expects."""


class BodyMismatchError(ConfigError):
    """Features or weights from a different model body (weights fingerprint) than expected."""
