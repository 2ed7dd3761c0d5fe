"""Where things are in an activation tensor: the axis layout of a hook point, and token
positions counted among *real* tokens (so left and right padding agree).

Most hooks are ``[batch, pos, ...]``; attention patterns and scores are
``[batch, head, q, k]`` (:func:`hook_layout` ``"head_q_k"``; Sites and interventions act on the
query axis there), and token-id hooks (``embed.hook_in``) carry ids, not activations.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mechunlearn.errors import EmptyDataError, LayoutError, ShapeError

Layout = Literal["pos", "head_q_k", "tokens"]
_PATTERN_SUFFIXES = ("hook_pattern", "hook_attn_scores")
_TOKEN_HOOKS = ("embed.hook_in", "pos_embed.hook_in", "token_type_embed.hook_in")


def hook_layout(hook_name: str) -> Layout:
    """Axis layout of a TransformerLens hook's activation, from its name.

    * ``"pos"``: ``[batch, pos, d]`` or ``[batch, pos, head, d_head]`` (residual stream,
      attention/MLP outputs, ``hook_q/k/v/z``, ...): token positions on axis 1.
    * ``"head_q_k"``: ``[batch, head, query, key]`` (``attn.hook_pattern``,
      ``attn.hook_attn_scores``): token (query) positions on axis 2, not axis 1.
    * ``"tokens"``: ``[batch, pos]`` integer token ids (``embed.hook_in``): not features.
    """
    if hook_name.endswith(_PATTERN_SUFFIXES):
        return "head_q_k"
    if hook_name in _TOKEN_HOOKS or hook_name.endswith(tuple("." + t for t in _TOKEN_HOOKS)):
        return "tokens"
    return "pos"


def to_pos_major(hook_name: str, acts: Tensor, who: str) -> Tensor:
    """View ``acts`` with token positions on axis 1: ``[batch, head, q, k]`` becomes
    ``[batch, q, head, k]``; ``[batch, pos, ...]`` is returned as is.

    Raises :class:`LayoutError` for token-id hooks and :class:`ShapeError` when the tensor
    does not have the layout its hook name implies. Inverse: :func:`from_pos_major`.
    """
    layout = hook_layout(hook_name)
    if layout == "tokens" or not acts.is_floating_point():
        raise LayoutError(
            f"{who}: hook {hook_name!r} carries integer token ids [batch, pos] "
            f"(dtype {acts.dtype}), not activations; use hook_embed or a residual hook."
        )
    if layout == "head_q_k":
        if acts.ndim != 4:
            raise ShapeError(
                f"{who}: hook {hook_name!r} should be [batch, head, query, key], got shape "
                f"{tuple(acts.shape)}."
            )
        return acts.transpose(1, 2)
    return acts


def from_pos_major(hook_name: str, acts: Tensor) -> Tensor:
    """Inverse of :func:`to_pos_major` (back to the hook's own layout, contiguous)."""
    if hook_layout(hook_name) == "head_q_k":
        return acts.transpose(1, 2).contiguous()
    return acts


def _bool_mask(name: str, mask: Tensor | None, b: int, p: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(b, p, dtype=torch.bool, device=device)
    if tuple(mask.shape) != (b, p):
        raise ShapeError(f"{name} has shape {tuple(mask.shape)}, expected [batch, pos] = {(b, p)}.")
    return mask.to(device=device).bool()


def last_real_index(mask: Tensor) -> Tensor:
    """Index of the last real token per row, for left or right padding. ``[b, p] -> [b]``."""
    p = mask.shape[1]
    if bool((mask.sum(1) == 0).any()):
        raise EmptyDataError("A row of the attention mask has no real tokens.")
    return p - 1 - mask.flip(1).to(torch.int8).argmax(1)


def first_real_index(mask: Tensor) -> Tensor:
    """Index of the first real token per row. ``[b, p] -> [b]``."""
    return mask.to(torch.int8).argmax(1)


def real_position_index(mask: Tensor, position: int) -> Tensor:
    """Absolute index of the ``position``-th real token per row (negative: from the end)."""
    n_real = mask.sum(1)
    rel = position if position >= 0 else n_real + position
    rel = torch.as_tensor(rel, device=mask.device).expand_as(n_real)
    if bool(((rel < 0) | (rel >= n_real)).any()):
        raise ShapeError(
            f"Token position {position} is out of range for rows with {n_real.min().item()}.."
            f"{n_real.max().item()} real tokens."
        )
    return first_real_index(mask) + rel
