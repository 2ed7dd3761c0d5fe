"""Hook handles: :func:`add_hooks` adds ``(hook_name, fn)`` forward/backward hooks to a
TransformerLens model and returns a :class:`HookHandles` that removes exactly those hooks.

Hooks are removed by handle, not by hook point, so other hooks on the model (yours,
TransformerLens's) survive; each hook counts its calls (``HookHandles.fired``), which
:func:`mechunlearn.apply` uses to raise when one never ran.

The edit protocol that used to live here (``Intervention``, ``Compose``, ``apply``,
``register_decoder``) moved to :mod:`mechunlearn.interventions.base`, and the position masks
(``Positions``, ``position_mask``, ``forward_masks``) to :mod:`mechunlearn.masks`; both stay
importable from here (the first by a deprecated module ``__getattr__``, for one release).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from mechunlearn.masks import Positions, forward_masks, position_mask  # noqa: F401 (kept importable)
from mechunlearn.sites import Site

_MOVED = ("Intervention", "Compose", "apply", "register_decoder")


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


def __getattr__(name: str) -> Any:  # deprecated aliases, one release
    if name in _MOVED:
        import warnings

        from mechunlearn.interventions import base

        warnings.warn(f"mechunlearn.hooks.{name} moved to mechunlearn.interventions.base (also "
                      f"mechunlearn.{name if name != 'register_decoder' else 'interventions'}); "
                      "this alias goes away in the next release.", DeprecationWarning,
                      stacklevel=2)
        return getattr(base, name)
    raise AttributeError(f"module 'mechunlearn.hooks' has no attribute {name!r}")
