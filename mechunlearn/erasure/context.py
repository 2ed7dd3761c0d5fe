"""What counts as an *edit* for an erasure report, and how it is switched on.

An edit is one of:

* ``None``: the unedited model (the reference row);
* an :class:`~mechunlearn.interventions.Intervention` (``Project``, ``Erase``, ``Compose`` of edits
  at several Sites, ...): applied at run time with :func:`mechunlearn.apply`;
* a :class:`WeightEdit`: an in-place weight edit (``weights.orthogonalize_``) made on entry
  and undone bit for bit on exit;
* any callable ``f(model)`` returning a context manager.

:func:`edit_context` turns each into a context manager. Run-time edits use
``check_fired=False``: feature extraction stops the forward pass after the last Site it
reads, so edits at later hook points legitimately never run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from mechunlearn.errors import ConfigError
from mechunlearn.interventions import Intervention, apply

Edit = Any  # None | Intervention | WeightEdit | callable model -> context manager


@dataclass(frozen=True)
class WeightEdit:
    """Orthogonalise the residual writers' weights against ``directions`` while active.

    Args:
        directions: ``[k, d_model]`` / ``[d_model]`` tensor or ``Directions``.
        writers: writer kinds (``weights.WRITER_KINDS`` subset; default all).

    Use as an edit in :func:`mechunlearn.erasure.erasure_report`; ``weights.orthogonalize_``
    is applied on entry and its handle's ``undo()`` restores the weights on exit (also on
    errors).
    """

    directions: Any
    writers: Sequence[str] | None = None

    def __call__(self, model: Any) -> AbstractContextManager[Any]:
        return _weight_edit(model, self.directions, self.writers)


@contextmanager
def _weight_edit(model: Any, directions: Any, writers: Sequence[str] | None) -> Iterator[Any]:
    from mechunlearn.weights import orthogonalize_

    handle = orthogonalize_(model, directions, writers)
    try:
        yield handle
    finally:
        handle.undo()


def edit_context(model: Any, edit: Edit) -> AbstractContextManager[Any]:
    """A context manager that switches ``edit`` on for ``model`` (see module doc)."""
    if edit is None:
        return nullcontext()
    if isinstance(edit, Intervention):
        return apply(model, edit, check_fired=False)
    if callable(edit):
        cm = edit(model)
        if not isinstance(cm, AbstractContextManager):
            raise ConfigError(
                f"An edit callable must return a context manager, {edit!r} returned "
                f"{type(cm).__name__}; wrap weight edits with erasure.WeightEdit."
            )
        return cm
    raise ConfigError(
        f"Unknown edit {type(edit).__name__}: use None, an Intervention (Project, Erase, "
        "Compose, ...), erasure.WeightEdit(directions) or a callable model -> context manager."
    )


def n_directions(edit: Edit) -> int:
    """Total number of directions an edit removes (summed over Sites; 0 if unknown)."""
    if isinstance(edit, WeightEdit):
        basis = getattr(edit.directions, "basis", edit.directions)
        return 1 if getattr(basis, "ndim", 2) == 1 else int(basis.shape[0])
    if isinstance(edit, Intervention):
        total = 0
        for leaf in edit.interventions():
            b = getattr(leaf, "basis", None)
            er = getattr(leaf, "eraser", None)
            if b is not None:
                total += int(b.shape[0])
            elif er is not None and hasattr(er, "proj_left"):
                total += int(er.proj_left.shape[1])
        return total
    return 0

