"""Errors of the SEAL diagnostics: aliases of :mod:`mechunlearn.errors` (the one error module)."""

from mechunlearn.errors import BodyMismatchError, MalformedRecordError, SiteMismatchError

__all__ = ["BodyMismatchError", "MalformedRecordError", "SiteMismatchError"]
