"""Linear algebra shared by activation and weight edits (one implementation each)."""

from __future__ import annotations

from torch import Tensor


def project_out(x: Tensor, basis: Tensor) -> Tensor:
    """``x - (x U^T) U`` for ``x [..., d]`` and orthonormal ``U [k, d]`` (``basis``).

    ``U`` is cast to ``x``'s dtype and device; the result has ``x``'s shape, dtype and device.
    Never forms a ``d x d`` matrix (cost ``O(k d)`` per vector). The orthogonal projection onto
    the complement of the span (not ``I - U^T U / d``).
    """
    u = basis.to(x.device, x.dtype)
    return x - (x @ u.T) @ u
