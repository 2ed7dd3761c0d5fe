"""Activation-space edits: Project, Steer, Clamp, Erase, Patch.

Each is a frozen dataclass implementing :class:`~mechunlearn.interventions.base.Intervention`:
``edit`` acts on vectors ``[..., d]``; the base class picks the Site's head (``site.head``) and
the token ``positions`` (``"all"``, ``"prompt"``, ``"response"``, ints, or a bool
``[batch, pos]`` mask). Each also has ``fingerprint``: the model the edit was fitted on (taken
from the source, e.g. :class:`~mechunlearn.directions.Directions`; ``None`` for plain tensors):
``apply`` warns on a model with other weights (strict mode raises, see
:mod:`mechunlearn.provenance`). Apply them with ``mechunlearn.apply(model, *interventions)``;
combine with ``Compose``. The Site's ``position`` (a feature *reduction*) is ignored here:
``positions`` chooses the edited tokens. Dtype and device follow the activation.

**Sources.** ``Project`` takes anything with ``.basis`` ``[k, d]`` and ``.site``
(:class:`HasBasis`); ``Steer`` and ``Clamp`` anything with ``.direction`` ``[d]`` and ``.site``
(:class:`HasDirection`); both also take plain tensors (then ``site=`` is required). The
source's ``fingerprint`` (if any) is inherited.

**Projection.** The orthogonal projection onto the complement of span(ω) is I − ωωᵀ/‖ω‖²
(not I − ωωᵀ/d, which removes only 1/d of the component along a unit ω); for an orthonormal
basis B ``[k, d]`` ``Project`` computes x − (x Bᵀ) B without ever forming a d×d matrix.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from mechunlearn.directions.base import _make_eraser, orthonormalize
from mechunlearn.errors import ConfigError, NonFiniteError, ShapeError, check_finite
from mechunlearn.interventions.base import Intervention
from mechunlearn.interventions.codec import _encode, from_dict, register
from mechunlearn.linalg import project_out
from mechunlearn.masks import Positions
from mechunlearn.sites import Site


@runtime_checkable
class HasBasis(Protocol):
    """A basis ``[k, d]`` found at a Site (e.g. :class:`~mechunlearn.directions.Directions`)."""

    basis: Tensor
    site: Site


@runtime_checkable
class HasDirection(Protocol):
    """A direction ``[d]`` found at a Site (e.g. :class:`~mechunlearn.directions.Directions`)."""

    direction: Tensor
    site: Site


def _site(value: Any, fallback: Site | None, name: str) -> Site:
    site = value if value is not None else fallback
    if not isinstance(site, Site):
        raise ConfigError(f"{name} needs site=Site(...) (got {site!r}) to know where to act.")
    return site


def _vector(name: str, v: Any) -> Tensor:
    t = torch.as_tensor(v.detach() if isinstance(v, Tensor) else v)
    if not t.is_floating_point():
        t = t.float()
    check_finite(name, t)
    return t


def _inherit_fingerprint(iv: Any, source: Any, kind: type | None) -> None:
    """Take the fitted-on model's fingerprint from a ``kind`` source unless given."""
    fp = iv.fingerprint
    if fp is None and kind is not None and isinstance(source, kind):
        fp = getattr(source, "fingerprint", None)
    if fp is not None and not isinstance(fp, str):
        raise ConfigError(f"{type(iv).__name__}.fingerprint must be a str or None, got {fp!r}.")
    object.__setattr__(iv, "fingerprint", fp)


def _unpack(iv: Any, source: Any, kind: type, attr: str) -> tuple[Any, Site | None]:
    """``(source.<attr>, source.site)`` for a ``kind`` source, else ``(source, None)``; the
    fingerprint is inherited on the way (one rule for every edit built from a source)."""
    _inherit_fingerprint(iv, source, kind)
    if isinstance(source, kind):
        return getattr(source, attr), source.site
    return source, None


def _number(name: str, v: Any) -> float:
    """``v`` as a finite float, else :class:`ConfigError` / :class:`NonFiniteError`."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) and not (
            isinstance(v, Tensor) and v.numel() == 1):
        raise ConfigError(f"{name} must be a number, got {type(v).__name__} {v!r:.40}.")
    f = float(v)
    if not math.isfinite(f):
        raise NonFiniteError(f"{name} must be finite, got {f}.")
    return f


def _check_d(name: str, x: Tensor, d: int) -> None:
    if x.shape[-1] != d:
        raise ShapeError(f"{name}: activation has last dimension {x.shape[-1]}, expected d={d}.")


@runtime_checkable
class _HasEraser(Protocol):
    eraser: Any
    site: Site


class _Serialisable(Intervention):
    """``to_dict``/``from_dict`` for dataclass interventions with tensor fields."""

    def to_dict(self, tensors: dict[str, Tensor] | None = None, prefix: str = "0") -> dict[str, Any]:
        """JSON form. With ``tensors`` (a dict), tensors go there by key instead of inline."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name), tensors, f"{prefix}.{f.name}")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> Intervention:
        """Rebuild from :meth:`to_dict` output (any registered type)."""
        return from_dict(d, tensors)


@register
@dataclass(frozen=True, eq=False)
class Project(_Serialisable):
    """Remove the span of ``basis``: x ← x − (x Bᵀ) B.

    Args:
        basis: anything with ``.basis`` and ``.site`` (:class:`HasBasis`, e.g. Directions), or
            ``[k, d]`` / ``[d]`` vectors (orthonormalised in float64; zero, non-finite or
            linearly dependent rows raise).
        site: where to act (default: the source's site).
        positions: which tokens to edit.
        strength: α in x ← x − α (x Bᵀ) B (finite; 1: the projection, 0: no change, 2 reflects).
    """

    basis: HasBasis | Tensor
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None
    strength: float = 1.0

    def __post_init__(self) -> None:
        b, fallback = _unpack(self, self.basis, HasBasis, "basis")
        object.__setattr__(self, "basis", orthonormalize(b))
        object.__setattr__(self, "site", _site(self.site, fallback, "Project"))
        object.__setattr__(self, "strength", _number("Project.strength", self.strength))

    def edit(self, x: Tensor) -> Tensor:
        """``x [..., d]`` minus ``strength`` x its span component (low rank: ``[.., k]``)."""
        _check_d("Project", x, self.basis.shape[1])
        out = project_out(x, self.basis)
        return out if self.strength == 1.0 else x - self.strength * (x - out)

    @staticmethod
    def union(*projects: Project) -> Project:
        """One projection onto the union of the spans (same site and positions).

        Sequential projections equal this only when the spans are orthogonal.
        """
        if not projects:
            raise ConfigError("Project.union needs at least one Project.")
        if len(alphas := {p.strength for p in projects}) > 1:
            raise ConfigError(f"Project.union needs one strength, got {sorted(alphas)}.")
        basis = torch.cat([p.basis for p in projects])
        fps = {p.fingerprint for p in projects}
        return Project(basis, projects[0].site, projects[0].positions,
                       fps.pop() if len(fps) == 1 else None, projects[0].strength)


@register
@dataclass(frozen=True, eq=False)
class Steer(_Serialisable):
    """Add ``alpha * vector`` (``[d]``, used as given, not normalised)."""

    vector: HasDirection | Tensor
    alpha: float = 1.0
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        v, fallback = _unpack(self, self.vector, HasDirection, "direction")
        v = _vector("Steer.vector", v)
        if v.ndim != 1:
            raise ShapeError(f"Steer.vector must be [d], got shape {tuple(v.shape)}.")
        object.__setattr__(self, "vector", v)
        object.__setattr__(self, "alpha", _number("Steer.alpha", self.alpha))
        object.__setattr__(self, "site", _site(self.site, fallback, "Steer"))

    def edit(self, x: Tensor) -> Tensor:
        """``x [..., d] + alpha * vector``."""
        _check_d("Steer", x, self.vector.shape[0])
        return x + self.alpha * self.vector.to(x.device, x.dtype)


@register
@dataclass(frozen=True, eq=False)
class Clamp(_Serialisable):
    """Set the coordinate along a unit ``direction`` to ``value``: x ← x + (value − x·u) u."""

    direction: HasDirection | Tensor
    value: float = 0.0
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        v, fallback = _unpack(self, self.direction, HasDirection, "direction")
        u = orthonormalize(_vector("Clamp.direction", v).reshape(1, -1))[0]
        object.__setattr__(self, "direction", u)
        object.__setattr__(self, "value", _number("Clamp.value", self.value))
        object.__setattr__(self, "site", _site(self.site, fallback, "Clamp"))

    def edit(self, x: Tensor) -> Tensor:
        """``x [..., d]`` with coordinate ``value`` along ``direction``."""
        _check_d("Clamp", x, self.direction.shape[0])
        u = self.direction.to(x.device, x.dtype)
        return x + (self.value - x @ u).unsqueeze(-1) * u


@register
@dataclass(frozen=True, eq=False)
class Erase(_Serialisable):
    """Apply a LEACE eraser: x ← x − ((x − bias) Rᵀ) Lᵀ (``concept_erasure.LeaceEraser``;
    Belrose et al., "LEACE: Perfect linear concept erasure in closed form", arXiv:2306.03819).

    ``eraser`` may be a ``LeaceEraser`` or anything with ``.eraser`` and ``.site``
    (:class:`~mechunlearn.directions.Directions` from ``directions.leace``).
    """

    eraser: Any
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        from_source = isinstance(self.eraser, _HasEraser)
        er, fallback = _unpack(self, self.eraser, _HasEraser, "eraser")
        if from_source:
            if er is None:
                raise ConfigError("Erase needs Directions from directions.leace (no eraser set).")
        if isinstance(er, dict):
            er = _make_eraser(er)
        if not all(hasattr(er, a) for a in ("proj_left", "proj_right", "bias")):
            raise ConfigError(f"Erase needs a concept_erasure LeaceEraser, got {type(er).__name__}.")
        object.__setattr__(self, "eraser", er)
        object.__setattr__(self, "site", _site(self.site, fallback, "Erase"))

    def edit(self, x: Tensor) -> Tensor:
        """Erased ``x [..., d]`` (computed in ``x``'s dtype)."""
        er = self.eraser
        _check_d("Erase", x, er.proj_left.shape[0])
        L, R = er.proj_left.to(x.device, x.dtype), er.proj_right.to(x.device, x.dtype)
        delta = x - er.bias.to(x.device, x.dtype) if er.bias is not None else x
        return x - (delta @ R.T) @ L.T

    def to_dict(self, tensors: dict[str, Tensor] | None = None, prefix: str = "0") -> dict[str, Any]:
        er = self.eraser
        parts = {"proj_left": er.proj_left, "proj_right": er.proj_right, "bias": er.bias}
        return {"type": "Erase",
                "eraser": {k: _encode(v, tensors, f"{prefix}.eraser.{k}") for k, v in parts.items()},
                "site": _encode(self.site, tensors, ""),
                "positions": _encode(self.positions, tensors, f"{prefix}.positions"),
                "fingerprint": self.fingerprint}


@register
@dataclass(frozen=True, eq=False)
class Patch(_Serialisable):
    """Replace the activation with ``cached`` (broadcast to ``[batch, pos, d]``) at
    ``positions``; e.g. a cached run's activation, or a mean activation ``[d]``."""

    cached: Tensor
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _inherit_fingerprint(self, None, None)
        object.__setattr__(self, "cached", _vector("Patch.cached", self.cached))
        object.__setattr__(self, "site", _site(self.site, None, "Patch"))

    def edit(self, x: Tensor) -> Tensor:
        """``cached`` expanded to ``x``'s shape, in ``x``'s dtype/device."""
        try:
            return self.cached.to(x.device, x.dtype).expand_as(x)
        except RuntimeError as e:
            raise ShapeError(
                f"Patch at {self.site}: cached activation {tuple(self.cached.shape)} does not "
                f"broadcast to the activation {tuple(x.shape)}."
            ) from e
