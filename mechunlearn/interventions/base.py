"""The edit protocol: the :class:`Intervention` base class, :class:`Compose`, and the
:func:`apply` context manager.

An intervention is a :class:`~mechunlearn.sites.Site` plus a function of the activation at
that hook point. ``apply(model, *interventions)`` adds one forward hook per intervention
(:func:`mechunlearn.hooks.add_hooks`), removes exactly the handles it added in ``finally``
(also on exceptions and ``KeyboardInterrupt``), and raises :class:`HookNotFiredError` at exit
if one of them never ran. Other hooks on the model (yours, TransformerLens's) are never touched.

**Order.** Interventions at the *same* hook point run in the order given (``Compose`` is
flattened in place); each sees the previous one's output. Interventions at different hook
points run in the model's forward order.

**Positions.** Each intervention edits the token positions named by its ``positions``
(:mod:`mechunlearn.masks`). Int positions index the whole sequence also when a pass continues a
KV cache (TransformerLens ``generate``, ``mechunlearn.lm.greedy(kv_cache=True)``): ``apply``
reads each pass's cache length and ``attention_mask`` (:func:`mechunlearn.masks.track_passes`),
so ``positions=[0]`` stays on the prompt's first token instead of landing on every new token.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, HookNotFiredError, ShapeError
from mechunlearn.hooks import HookHandles, add_hooks
from mechunlearn.layouts import from_pos_major, to_pos_major
from mechunlearn.masks import Positions, edit_masks, position_mask, track_passes
from mechunlearn.provenance import check_same_model
from mechunlearn.sites import Site

#: ``dict -> Intervention`` decoder, registered by :mod:`mechunlearn.interventions.io` on
#: import (this module sits below it and must not import it).
_DECODER: Callable[[dict[str, Any]], Any] | None = None


def register_decoder(fn: Callable[[dict[str, Any]], Any]) -> None:
    """Set the decoder :meth:`Compose.from_dict` uses (called by ``mechunlearn.interventions``)."""
    global _DECODER
    _DECODER = fn


class Intervention(abc.ABC):
    """Base class: subclasses are frozen dataclasses with ``site`` and ``positions`` fields
    and implement :meth:`edit` on vectors ``[..., d]``.

    ``__call__(act)`` takes the raw hook activation ``[batch, pos, d]`` (or
    ``[batch, pos, head, d_head]`` with ``site.head`` set), edits the selected head and
    positions, and returns a tensor of the same shape. For attention patterns
    (``[batch, head, query, key]``, see :func:`mechunlearn.sites.hook_layout`) positions are
    query positions and ``site.head`` picks axis 1; ``edit`` sees attention rows ``[..., key]``.
    """

    site: Site
    positions: Positions

    @abc.abstractmethod
    def edit(self, x: Tensor) -> Tensor:
        """Edit vectors ``x`` of shape ``[..., d]``; return the same shape."""

    def interventions(self) -> list[Intervention]:
        """Flat list of leaf interventions (``[self]`` for a leaf)."""
        return [self]

    def __call__(self, act: Tensor) -> Tensor:
        name = self.site.hook_name
        x = to_pos_major(name, act, f"{type(self).__name__} at {self.site.key}")
        head = self.site.head
        if head is not None:
            if x.ndim != 4 or head >= x.shape[2]:
                raise ShapeError(
                    f"{type(self).__name__} at {self.site.key}: head={head} needs a per-head "
                    f"activation with more than {head} heads, got shape {tuple(act.shape)}."
                )
            out = x.clone()
            out[:, :, head] = self._edit_pos_major(x[:, :, head])
            return from_pos_major(name, out)
        return from_pos_major(name, self._edit_pos_major(x))

    def _edit_pos_major(self, act: Tensor) -> Tensor:
        """Edit the selected positions of ``act`` ``[batch, pos, ...]`` (head already picked)."""
        if act.ndim < 2:
            raise ShapeError(
                f"{type(self).__name__} at {self.site.key}: activation shape {tuple(act.shape)} "
                "has no [batch, pos] dimensions."
            )
        if act.ndim == 4:
            flat = act.reshape(*act.shape[:2], -1)
            return self._edit_pos_major(flat).reshape(act.shape)
        mask = position_mask(self.positions, act.shape[0], act.shape[1], act.device)
        edited = self.edit(act)
        if edited.shape != act.shape:
            raise ShapeError(
                f"{type(self).__name__}.edit returned shape {tuple(edited.shape)} for input "
                f"{tuple(act.shape)}."
            )
        if mask is None:
            return edited
        return torch.where(mask.unsqueeze(-1), edited, act)


def _leaves(items: tuple[Intervention, ...], who: str) -> list[Intervention]:
    """The leaf interventions of ``items`` in order (``Compose`` flattened); :class:`ConfigError`
    naming ``who`` for a non-Intervention or an empty list."""
    flat: list[Intervention] = []
    for iv in items:
        if not isinstance(iv, Intervention):
            raise ConfigError(f"{who} takes Interventions, got {type(iv).__name__}.")
        flat.extend(iv.interventions())
    if not flat:
        raise ConfigError(f"{who} needs at least one intervention.")
    return flat


@dataclass(frozen=True)
class Compose(Intervention):
    """Several interventions applied together; at one hook point, in the order given."""

    parts: tuple[Intervention, ...] = ()
    site: Site = field(init=False, repr=False)
    positions: Positions = field(default="all", init=False, repr=False)

    def __init__(self, *parts: Intervention) -> None:
        flat = _leaves(parts, "Compose")
        object.__setattr__(self, "parts", tuple(flat))
        object.__setattr__(self, "site", flat[0].site)
        object.__setattr__(self, "positions", "all")

    def interventions(self) -> list[Intervention]:
        return list(self.parts)

    def edit(self, x: Tensor) -> Tensor:
        sites = {p.site.hook_name for p in self.parts}
        if len(sites) > 1:
            raise ConfigError(
                f"Compose.edit on raw vectors needs one hook point, these span {sorted(sites)}; "
                "use apply(model, compose) instead."
            )
        for p in self.parts:
            x = p.edit(x)
        return x

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form; every part must itself have ``to_dict``."""
        return {"type": "Compose", "parts": [p.to_dict() for p in self.parts]}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Compose:
        """Inverse of :meth:`to_dict` (parts rebuilt by the decoder that
        ``mechunlearn.interventions`` registers on import: no import back up the layers)."""
        if _DECODER is None:
            raise ConfigError("Compose.from_dict needs `import mechunlearn.interventions` "
                              "(or `import mechunlearn`) first; it registers the part types.")
        out = _DECODER(d)
        if not isinstance(out, Compose):
            raise ConfigError(f"Not a Compose dict: type {d.get('type')!r}.")
        return out


@contextmanager
def apply(
    model: Any,
    *interventions: Intervention,
    check_fired: bool = True,
    attention_mask: Tensor | None = None,
    response_mask: Tensor | None = None,
) -> Iterator[HookHandles]:
    """Apply interventions inside a ``with`` block.

    Args:
        model: a TransformerLens model (``TransformerBridge``) with ``hook_dict``.
        interventions: leaves or ``Compose``; flattened in order.
        check_fired: raise :class:`HookNotFiredError` at exit if a hook never ran.
        attention_mask: ``[batch, pos]`` for int positions with padded inputs.
        response_mask: ``[batch, pos]`` for ``positions="prompt"|"response"``.

    An intervention that records the model it was fitted on (``fingerprint``, set from
    :class:`~mechunlearn.directions.Directions`) warns with ``ModelMismatchWarning`` on a
    model with other weights (raises ``ModelMismatchError`` under
    :func:`mechunlearn.provenance.strict`).

    Works with ``model(...)``, ``run_with_cache``, ``run_with_hooks`` and ``generate`` (with or
    without a KV cache: int positions index the whole sequence, see
    :func:`mechunlearn.masks.track_passes`).

    Raises:
        ConfigError: (inside the block) an int position outside every sequence of a pass.
    """
    leaves = _leaves(interventions, "apply()")
    for iv in leaves:
        iv.site.resolve(model)
        check_same_model(getattr(iv, "fingerprint", None), model,
                         f"{type(iv).__name__} at {iv.site.key}")
    with edit_masks(attention_mask, response_mask), track_passes(model):
        handles = add_hooks(model, [(iv.site.hook_name, iv) for iv in leaves])
        names = [e[2] for e in handles.entries]
        try:
            yield handles
            never = [names[i] for i in range(len(names)) if handles.fired.get(i, 0) == 0]
            if check_fired and never:
                raise HookNotFiredError(
                    f"Hook(s) {never} added by apply() never fired inside the block. Did the "
                    "block run a forward pass through those layers (stop_at_layer?), or does "
                    "this architecture not call that hook? Pass check_fired=False to allow it."
                )
        finally:
            handles.remove()
