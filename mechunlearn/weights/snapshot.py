"""Undoing weight edits: :class:`EditHandle` (restores edited tensors bit for bit and re-ties
untied ones) and :func:`snapshot` (a handle over every parameter of a model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class EditHandle:
    """Restores edited tensors bit for bit. ``undo()`` is idempotent."""

    saved: list[tuple[nn.Parameter, Tensor]] = field(default_factory=list)
    retied: list[tuple[nn.Module, str, nn.Parameter]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    done: bool = False

    def undo(self) -> None:
        """Copy the saved values back and re-tie parameters that were untied."""
        if self.done:
            return
        with torch.no_grad():
            for p, old in self.saved:
                p.copy_(old)
        for mod, attr, p in self.retied:
            setattr(mod, attr, p)
        self.done = True

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()



def snapshot(model: Any) -> EditHandle:
    """Handle that restores every parameter of ``model`` (bridge + wrapped HF model).

    ``model``: a ``TransformerBridge`` (its ``original_model``'s parameters are included) or
    any ``nn.Module``. Memory: one copy of every parameter (same dtypes and devices).
    ``handle.undo()`` (or leaving ``with snapshot(model):``) copies them back.
    """
    params = {id(p): p for p in model.parameters()}
    hf = getattr(model, "original_model", None)
    if hf is not None:
        params.update({id(p): p for p in hf.parameters()})
    return EditHandle(saved=[(p, p.detach().clone()) for p in params.values()], names=["all"])
