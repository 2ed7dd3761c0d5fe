"""Hook interventions: the Intervention base class, Compose, and the ``apply`` context manager.

An intervention is a :class:`~mechunlearn.sites.Site` plus a function of the activation at
that hook point. ``apply(model, *interventions)`` adds one forward hook per intervention,
removes exactly the handles it added in ``finally`` (also on exceptions and
``KeyboardInterrupt``), and raises :class:`HookNotFiredError` at exit if one of them never
ran. Other hooks on the model (yours, TransformerLens's) are never touched.

**Order.** Interventions at the *same* hook point run in the order given (``Compose`` is
flattened in place); each sees the previous one's output. Interventions at different hook
points run in the model's forward order.

**Positions.** Each intervention edits the token positions named by its ``positions``:
``"all"``, ``"prompt"`` / ``"response"`` (needs ``response_mask=`` in ``apply``), an int or a
list of ints (indices among *real* tokens, negative from the last real token, so left and
right padding agree; needs ``attention_mask=`` in ``apply`` when inputs are padded), or a
boolean ``[batch, pos]`` tensor. During ``generate`` with a KV cache each step sees one
position: use ``"all"`` there.
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, HookNotFiredError, ShapeError
from mechunlearn.provenance import check_same_model
from mechunlearn.sites import Site, first_real_index, from_pos_major, to_pos_major

Positions = Union[str, int, Sequence[int], Tensor]  # noqa: UP007 (runtime alias)

#: ``dict -> Intervention`` decoder, registered by :mod:`mechunlearn.interventions` on import
#: (this module sits below it and must not import it).
_DECODER: Callable[[dict[str, Any]], Any] | None = None


def register_decoder(fn: Callable[[dict[str, Any]], Any]) -> None:
    """Set the decoder :meth:`Compose.from_dict` uses (called by ``mechunlearn.interventions``)."""
    global _DECODER
    _DECODER = fn

_CONTEXT: contextvars.ContextVar[dict[str, Tensor | None] | None] = contextvars.ContextVar(
    "mechunlearn_hook_context", default=None
)


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


@dataclass(frozen=True)
class Compose(Intervention):
    """Several interventions applied together; at one hook point, in the order given."""

    parts: tuple[Intervention, ...] = ()
    site: Site = field(init=False, repr=False)
    positions: Positions = field(default="all", init=False, repr=False)

    def __init__(self, *parts: Intervention) -> None:
        flat: list[Intervention] = []
        for p in parts:
            if not isinstance(p, Intervention):
                raise ConfigError(f"Compose takes Interventions, got {type(p).__name__}.")
            flat.extend(p.interventions())
        if not flat:
            raise ConfigError("Compose needs at least one intervention.")
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


def position_mask(positions: Positions, b: int, p: int, device: torch.device) -> Tensor | None:
    """Boolean ``[b, p]`` mask of the positions to edit (``None`` means every position)."""
    if isinstance(positions, str):
        if positions == "all":
            return None
        if positions in ("prompt", "response"):
            resp = _context_mask("response_mask", b, p, device)
            if resp is None:
                raise ConfigError(
                    f"positions={positions!r} needs `response_mask=` passed to apply(...)."
                )
            real = _context_mask("attention_mask", b, p, device)
            real = torch.ones_like(resp) if real is None else real
            return resp & real if positions == "response" else (~resp) & real
        raise ConfigError(
            f"Unknown positions {positions!r}: use 'all', 'prompt', 'response', ints or a mask."
        )
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or tuple(positions.shape) != (b, p):
            raise ShapeError(
                f"A positions mask must be bool [batch, pos] = {(b, p)}, got "
                f"{positions.dtype} {tuple(positions.shape)}."
            )
        return positions.to(device)
    idx = [positions] if isinstance(positions, int) else list(positions)
    real = _context_mask("attention_mask", b, p, device)
    if real is None:
        real = torch.ones(b, p, dtype=torch.bool, device=device)
    n_real = real.sum(1)
    start = first_real_index(real)
    mask = torch.zeros(b, p, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)
    for i in idx:
        rel = torch.full_like(n_real, i) if i >= 0 else n_real + i
        ok = (rel >= 0) & (rel < n_real)
        mask[rows[ok], (start + rel)[ok]] = True
    return mask


def _context_mask(name: str, b: int, p: int, device: torch.device) -> Tensor | None:
    m = (_CONTEXT.get() or {}).get(name)
    if m is None:
        return None
    if tuple(m.shape) != (b, p):
        raise ShapeError(
            f"{name} passed to apply() has shape {tuple(m.shape)} but the hook saw "
            f"[batch, pos] = {(b, p)}; masks must match the forward pass's input."
        )
    return m.to(device).bool()


@dataclass
class HookHandles:
    """Handles of hooks added by :func:`add_hooks`; ``remove()`` removes exactly these."""

    entries: list[tuple[Any, Any, str]] = field(default_factory=list)  # (hook point, handle, name)
    fired: dict[int, int] = field(default_factory=dict)

    def remove(self) -> None:
        """Remove every hook this object added (idempotent)."""
        while self.entries:
            hp, handle, _ = self.entries.pop()
            handle.hook.remove()
            for lst in (getattr(hp, "fwd_hooks", None), getattr(hp, "bwd_hooks", None)):
                if lst is not None and handle in lst:
                    lst.remove(handle)

    def unfired(self) -> list[str]:
        """Names of hooks that have not run yet."""
        return [name for i, (_, _, name) in enumerate(self.entries) if self.fired.get(i, 0) == 0]


def add_hooks(
    model: Any,
    hooks: Sequence[tuple[str, Callable[[Tensor], Tensor | None]]],
    dir: str = "fwd",
) -> HookHandles:
    """Add ``(hook_name, fn(act) -> act | None)`` hooks; returns handles to remove them.

    Every name is validated before any hook is added, so a bad name adds nothing.
    """
    for name, _ in hooks:
        Site(name).resolve(model)
    handles = HookHandles()
    try:
        for i, (name, fn) in enumerate(hooks):
            hp = model.hook_dict[name]
            handle = hp.add_hook(_counting(fn, handles.fired, i), dir=dir)
            handles.entries.append((hp, handle, name))
    except BaseException:
        handles.remove()
        raise
    return handles


def _counting(fn: Callable[[Tensor], Tensor | None], fired: dict[int, int], i: int) -> Callable:
    def hook(act: Tensor, hook: Any = None) -> Tensor | None:
        fired[i] = fired.get(i, 0) + 1
        return fn(act)

    return hook


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

    Works with ``model(...)``, ``run_with_cache``, ``run_with_hooks`` and ``generate``.
    """
    leaves: list[Intervention] = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise ConfigError(f"apply() takes Interventions, got {type(iv).__name__}.")
        leaves.extend(iv.interventions())
    if not leaves:
        raise ConfigError("apply() needs at least one intervention.")
    for iv in leaves:
        iv.site.resolve(model)
        check_same_model(getattr(iv, "fingerprint", None), model,
                         f"{type(iv).__name__} at {iv.site.key}")
    token = _CONTEXT.set({"attention_mask": attention_mask, "response_mask": response_mask})
    handles = add_hooks(model, [(iv.site.hook_name, iv) for iv in leaves])
    names = [e[2] for e in handles.entries]
    try:
        yield handles
        never = [names[i] for i in range(len(names)) if handles.fired.get(i, 0) == 0]
        if check_fired and never:
            raise HookNotFiredError(
                f"Hook(s) {never} added by apply() never fired inside the block. Did the block "
                "run a forward pass through those layers (stop_at_layer?), or does this "
                "architecture not call that hook? Pass check_fired=False to allow it."
            )
    finally:
        handles.remove()
        _CONTEXT.reset(token)


@contextmanager
def forward_masks(attention_mask: Tensor | None) -> Iterator[None]:
    """Hand one forward pass's padding mask ``[batch, pos]`` to the interventions of the
    enclosing :func:`apply` block (for int ``positions``: indices among real tokens).

    Decoders call this around each forward pass, whose width grows step by step, so that a
    position-indexed edit lands on each row's real tokens, not on padding. Outside an
    ``apply`` block it does nothing. A ``response_mask`` given to ``apply`` is dropped for the
    pass when its shape no longer matches.
    """
    cur = _CONTEXT.get()
    if cur is None or attention_mask is None:
        yield
        return
    resp = cur.get("response_mask")
    if resp is not None and tuple(resp.shape) != tuple(attention_mask.shape):
        resp = None
    token = _CONTEXT.set({**cur, "attention_mask": attention_mask, "response_mask": resp})
    try:
        yield
    finally:
        _CONTEXT.reset(token)
