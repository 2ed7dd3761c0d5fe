"""Sites: a hook point plus a rule that reduces token positions to one vector per sample.

A :class:`Site` is the *feature space* every mechunlearn capability works in: attribution
extracts features at a Site, direction finders fit on a Site, interventions edit a Site, and
sweeps iterate over Sites.

Hook names follow TransformerLens (``blocks.3.hook_resid_pre``). Note: the last block's
``hook_resid_post`` is *before* the final LayerNorm (Hugging Face's ``hidden_states[-1]`` is
after it); use ``ln_final.hook_normalized`` for the post-LayerNorm stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor

from mechunlearn.errors import (
    ConfigError,
    EmptyDataError,
    LayoutError,
    ShapeError,
    UnknownHookError,
)
from mechunlearn.layouts import (  # noqa: F401 (kept importable from mechunlearn.sites)
    _PATTERN_SUFFIXES,
    _TOKEN_HOOKS,
    Layout,
    _bool_mask,
    first_real_index,
    from_pos_major,
    hook_layout,
    last_real_index,
    real_position_index,
    to_pos_major,
)

Position = Union[Literal["last", "mean", "response_mean", "all"], int]  # noqa: UP007
ResidKind = Literal["pre", "mid", "post"]
SiteKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]

_POSITIONS = ("last", "mean", "response_mean", "all")
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
SITE_KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Site:
    """A feature space: TransformerLens hook name + token reduction (+ optional head).

    Args:
        hook_name: e.g. ``"blocks.2.hook_resid_post"``.
        position: ``"last"`` (last real token), ``"mean"`` (mean over real tokens),
            ``"response_mean"`` (mean over response tokens; needs a response mask),
            an int (index among *real* tokens; negative counts from the last real token, so
            left and right padding give the same result), or ``"all"`` (keep positions).
        head: head index for per-head hooks whose activation is ``[batch, pos, head, d_head]``
            (e.g. ``blocks.0.attn.hook_z``). Without it such activations are flattened to
            ``[batch, pos, head * d_head]``.

    Layouts (:func:`hook_layout`): positions are always *token* positions. For attention
    patterns (``attn.hook_pattern`` ``[batch, head, query, key]``) they are query positions,
    ``head`` picks axis 1, and one sample's vector is its attention row over keys.
    Token-id hooks (``embed.hook_in``) are refused with :class:`LayoutError`.
    """

    hook_name: str
    position: Position = "last"
    head: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ConfigError(f"Site.hook_name must be a non-empty string, got {self.hook_name!r}.")
        pos = self.position
        if isinstance(pos, bool) or not (isinstance(pos, int) or pos in _POSITIONS):
            raise ConfigError(
                f"Site.position must be one of {_POSITIONS} or an int token index (among "
                f"the real tokens: 0 the first, -1 the last), got {pos!r}."
            )
        if self.head is not None and (isinstance(self.head, bool) or not isinstance(self.head, int) or self.head < 0):
            raise ConfigError(f"Site.head must be a non-negative int or None, got {self.head!r}.")

    # ------------------------------------------------------------------ naming
    @property
    def layout(self) -> Layout:
        """Axis layout of the hook's activation (see :func:`hook_layout`)."""
        return hook_layout(self.hook_name)

    @property
    def layer(self) -> int | None:
        """Block index the hook belongs to (``None`` for embedding/unembedding hooks)."""
        m = _LAYER_RE.match(self.hook_name)
        return int(m.group(1)) if m else None

    @property
    def key(self) -> str:
        """Stable string id, e.g. ``blocks.2.hook_resid_post@last`` (used in files/tables)."""
        head = f"#h{self.head}" if self.head is not None else ""
        return f"{self.hook_name}{head}@{self.position}"

    def __str__(self) -> str:
        return self.key

    def with_position(self, position: Position) -> Site:
        """The same hook with another token reduction."""
        return Site(self.hook_name, position, self.head)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse: :meth:`from_dict`)."""
        return {"hook_name": self.hook_name, "position": self.position, "head": self.head}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Site:
        """Rebuild a Site written by :meth:`to_dict`."""
        try:
            return cls(d["hook_name"], d.get("position", "last"), d.get("head"))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"Not a Site dict: {d!r} ({e}).") from e

    # -------------------------------------------------------------- validation
    def resolve(self, model: Any) -> Site:
        """Check the hook exists on ``model`` (anything with a ``hook_dict``).

        Returns ``self``; raises :class:`UnknownHookError` listing the closest real names.
        """
        hook_dict = getattr(model, "hook_dict", None)
        if hook_dict is None:
            raise ConfigError(
                f"{type(model).__name__} has no `hook_dict`; pass a TransformerLens model "
                "(TransformerBridge) to Site.resolve."
            )
        if self.hook_name not in hook_dict:
            raise UnknownHookError(self.hook_name, hook_dict.keys())
        canon = getattr(hook_dict[self.hook_name], "name", self.hook_name)
        if "tokens" in (self.layout, hook_layout(str(canon))):
            raise LayoutError(
                f"Site {self.key}: hook {self.hook_name!r} carries integer token ids, not "
                "activations; use hook_embed or a residual-stream hook."
            )
        n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
        if self.layer is not None and n_layers is not None and self.layer >= n_layers:
            raise UnknownHookError(self.hook_name, hook_dict.keys())
        return self

    # --------------------------------------------------------------- reduction
    def reduce(
        self,
        acts: Tensor,
        attention_mask: Tensor | None = None,
        response_mask: Tensor | None = None,
    ) -> Tensor:
        """Reduce hook activations to per-sample features.

        Args:
            acts: the hook's activation in its own layout: ``[batch, pos, d]``,
                ``[batch, pos, head, d_head]``, or ``[batch, head, query, key]`` for attention
                patterns (positions then reduce over the query axis).
            attention_mask: ``[batch, pos]``, 1 for real tokens (default: all real).
            response_mask: ``[batch, pos]``, 1 for response tokens (``"response_mean"`` only).

        Returns:
            ``[batch, d]`` (or ``[batch, pos, d]`` for ``position="all"``).
        """
        acts = self._select_head(to_pos_major(self.hook_name, acts, f"Site {self.key}"))
        b, p = acts.shape[:2]
        mask = _bool_mask("attention_mask", attention_mask, b, p, acts.device)
        if self.position == "all":
            return acts
        if isinstance(self.position, int):
            idx = real_position_index(mask, self.position)
            return acts[torch.arange(b, device=acts.device), idx]
        if self.position == "last":
            return acts[torch.arange(b, device=acts.device), last_real_index(mask)]
        if self.position == "response_mean":
            if response_mask is None:
                raise ConfigError(
                    f"Site {self.key} needs a response mask: pass (prompt, response) pairs or "
                    "`response_mask=` to extract()."
                )
            mask = mask & _bool_mask("response_mask", response_mask, b, p, acts.device)
        counts = mask.sum(1)
        if bool((counts == 0).any()):
            bad = torch.nonzero(counts == 0).flatten().tolist()[:5]
            raise EmptyDataError(
                f"Site {self.key}: rows {bad} have no tokens to average over "
                "(empty response or all padding)."
            )
        w = mask.to(acts.dtype).unsqueeze(-1)
        return (acts * w).sum(1) / counts.to(acts.dtype).unsqueeze(-1)

    def _select_head(self, acts: Tensor) -> Tensor:
        if acts.ndim == 4:
            if self.head is None:
                return acts.flatten(2)
            if self.head >= acts.shape[2]:
                raise ShapeError(
                    f"Site {self.key}: head {self.head} out of range for activation with "
                    f"{acts.shape[2]} heads (shape {tuple(acts.shape)})."
                )
            return acts[:, :, self.head]
        if acts.ndim != 3:
            raise ShapeError(
                f"Site {self.key}: expected activation [batch, pos, d] or [batch, pos, head, "
                f"d_head], got shape {tuple(acts.shape)}."
            )
        if self.head is not None:
            raise ShapeError(
                f"Site {self.key} has head={self.head} but hook activation has no head "
                f"dimension (shape {tuple(acts.shape)}); use a per-head hook like attn.hook_z."
            )
        return acts


def resid(layer: int, kind: ResidKind = "post", position: Position = "last") -> Site:
    """Residual-stream Site of block ``layer``: ``blocks.{layer}.hook_resid_{kind}``."""
    if kind not in ("pre", "mid", "post"):
        raise ConfigError(f"resid kind must be 'pre', 'mid' or 'post', got {kind!r}.")
    return Site(f"blocks.{int(layer)}.hook_resid_{kind}", position)


def attn_out(layer: int, position: Position = "last") -> Site:
    """Attention-output Site of block ``layer``."""
    return Site(f"blocks.{int(layer)}.hook_attn_out", position)


def mlp_out(layer: int, position: Position = "last") -> Site:
    """MLP-output Site of block ``layer``."""
    return Site(f"blocks.{int(layer)}.hook_mlp_out", position)


def sites(
    model: Any,
    kinds: str | tuple[str, ...] = "resid_post",
    position: Position = "last",
    layers: range | list[int] | None = None,
) -> list[Site]:
    """Every Site of the given kind(s) across layers, validated on ``model``, layer-major.

    ``kinds`` are from ``SITE_KINDS``; e.g. ``sites(model, ("resid_pre", "mlp_out"))``.
    """
    kinds_t = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for k in kinds_t:
        if k not in SITE_KINDS:
            raise ConfigError(f"Unknown site kind {k!r}; choose from {SITE_KINDS}.")
    n_layers = int(model.cfg.n_layers)
    layer_list = list(range(n_layers)) if layers is None else list(layers)
    out = [Site(f"blocks.{i}.hook_{k}", position) for i in layer_list for k in kinds_t]
    for s in out:
        s.resolve(model)
    return out


def canonical_hook_name(model: Any, name: str) -> str:
    """The name of the HookPoint object ``name`` refers to (aliases share one HookPoint)."""
    hp = model.hook_dict.get(name)
    return getattr(hp, "name", name) if hp is not None else name


def check_sites(model: Any, sites: Any, what: str) -> list[Site]:
    """``sites`` (one Site or several) as a non-empty list, each resolved against ``model``.

    Raises:
        ConfigError: no Site, or an item that is not a Site (``what`` names the caller).
        UnknownHookError: a hook name the model does not have.
    """
    site_list = [sites] if isinstance(sites, Site) else list(sites)
    if not site_list:
        raise ConfigError(f"{what}() needs at least one Site.")
    for s in site_list:
        if not isinstance(s, Site):
            raise ConfigError(f"{what}() sites must be Site objects, got {type(s).__name__}.")
        s.resolve(model)
    return site_list
