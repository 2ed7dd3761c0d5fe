"""Activation-space interventions: Project, Steer, Clamp, Erase, Patch (+ serialisation).

Each is a frozen dataclass implementing :class:`mechunlearn.hooks.Intervention`: ``edit`` acts
on vectors ``[..., d]``; the base class picks the Site's head (``site.head``) and the token
``positions`` (``"all"``, ``"prompt"``, ``"response"``, ints, or a bool ``[batch, pos]``
mask). Each also has ``fingerprint``: the model the edit was fitted on (taken from
:class:`Directions`; ``None`` for plain tensors): ``apply`` warns on a model with other
weights (strict mode raises, see :mod:`mechunlearn.provenance`). Apply them with
``mechunlearn.apply(model, *interventions)``; combine with
``Compose``. The Site's ``position`` (a feature *reduction*) is ignored here: ``positions``
chooses the edited tokens. Dtype and device follow the activation.

**Projection and the seed's 1/d.** Seed 003 writes φ̂ = (I − ωωᵀ/d) φ. That matrix is not a
projection (it removes only 1/d of the component along a unit ω). The orthogonal projection
onto the complement of span(ω) is I − ωωᵀ/‖ω‖², and for an orthonormal basis B ``[k, d]``
``Project`` computes x − (x Bᵀ) B without ever forming a d×d matrix.

Serialisation: ``to_dict()`` gives JSON (tensors inline as lists) and ``from_dict`` rebuilds
any registered type (including ``Compose``); :func:`save` / :func:`load` store a list of
interventions as ``interventions.json`` + ``interventions.safetensors`` (atomic writes).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechunlearn.directions.base import Directions, _make_eraser, orthonormalize
from mechunlearn.errors import ConfigError, NonFiniteError, ShapeError, StoreError, check_finite
from mechunlearn.hooks import Compose, Intervention, Positions, register_decoder
from mechunlearn.sites import Site

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Register an Intervention class for :func:`from_dict` under its class name."""
    REGISTRY[cls.__name__] = cls
    return cls


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


def _inherit_fingerprint(iv: Any, source: Any) -> None:
    """Take the fitted-on model's fingerprint from ``source`` Directions unless given."""
    fp = iv.fingerprint
    if fp is None and isinstance(source, Directions):
        fp = source.fingerprint
    if fp is not None and not isinstance(fp, str):
        raise ConfigError(f"{type(iv).__name__}.fingerprint must be a str or None, got {fp!r}.")
    object.__setattr__(iv, "fingerprint", fp)


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
        basis: :class:`Directions`, or ``[k, d]`` / ``[d]`` vectors (orthonormalised in float64;
            zero, non-finite or linearly dependent rows raise).
        site: where to act (default: the Directions' site).
        positions: which tokens to edit.
    """

    basis: Any
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _inherit_fingerprint(self, self.basis)
        fallback = self.basis.site if isinstance(self.basis, Directions) else None
        b = self.basis.basis if isinstance(self.basis, Directions) else self.basis
        object.__setattr__(self, "basis", orthonormalize(b))
        object.__setattr__(self, "site", _site(self.site, fallback, "Project"))

    def edit(self, x: Tensor) -> Tensor:
        """``x [..., d]`` minus its component in the span (low rank: ``[.., k]`` coords)."""
        _check_d("Project", x, self.basis.shape[1])
        B = self.basis.to(x.device, x.dtype)
        return x - (x @ B.T) @ B

    @staticmethod
    def union(*projects: Project) -> Project:
        """One projection onto the union of the spans (same site and positions).

        Sequential projections equal this only when the spans are orthogonal.
        """
        if not projects:
            raise ConfigError("Project.union needs at least one Project.")
        basis = torch.cat([p.basis for p in projects])
        fps = {p.fingerprint for p in projects}
        return Project(basis, projects[0].site, projects[0].positions,
                       fps.pop() if len(fps) == 1 else None)


@register
@dataclass(frozen=True, eq=False)
class Steer(_Serialisable):
    """Add ``alpha * vector`` (``[d]``, used as given, not normalised)."""

    vector: Any
    alpha: float = 1.0
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _inherit_fingerprint(self, self.vector)
        fallback = self.vector.site if isinstance(self.vector, Directions) else None
        v = self.vector.direction if isinstance(self.vector, Directions) else self.vector
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

    direction: Any
    value: float = 0.0
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _inherit_fingerprint(self, self.direction)
        fallback = self.direction.site if isinstance(self.direction, Directions) else None
        v = self.direction.direction if isinstance(self.direction, Directions) else self.direction
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
    """Apply a LEACE eraser: x ← x − ((x − bias) Rᵀ) Lᵀ (``concept_erasure.LeaceEraser``).

    ``eraser`` may be a ``LeaceEraser`` or :class:`Directions` from ``directions.leace``.
    """

    eraser: Any
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _inherit_fingerprint(self, self.eraser)
        fallback = None
        er = self.eraser
        if isinstance(er, Directions):
            fallback, er = er.site, er.eraser
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

    cached: Any
    site: Site | None = None
    positions: Positions = "all"
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _inherit_fingerprint(self, None)
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


# ----------------------------------------------------------------- (de)serialisation
def _encode(v: Any, tensors: dict[str, Tensor] | None, key: str) -> Any:
    if isinstance(v, Site):
        return {"__site__": v.to_dict()}
    if isinstance(v, Tensor):
        if tensors is None:
            return {"__tensor__": v.tolist(), "dtype": str(v.dtype).replace("torch.", "")}
        tensors[key] = v.detach().cpu().clone().contiguous()
        return {"__ref__": key}
    if isinstance(v, (list, tuple)):
        return [_encode(x, tensors, f"{key}.{i}") for i, x in enumerate(v)]
    return v


def _decode(v: Any, tensors: dict[str, Tensor] | None) -> Any:
    if isinstance(v, dict):
        if "__site__" in v:
            return Site.from_dict(v["__site__"])
        if "__tensor__" in v:
            return torch.tensor(v["__tensor__"], dtype=getattr(torch, v.get("dtype", "float32")))
        if "__ref__" in v:
            if tensors is None or v["__ref__"] not in tensors:
                raise StoreError(f"Tensor {v['__ref__']!r} missing from the saved tensors.")
            return tensors[v["__ref__"]]
        return {k: _decode(x, tensors) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x, tensors) for x in v]
    return v


def to_dict(iv: Intervention, tensors: dict[str, Tensor] | None = None, prefix: str = "0") -> dict[str, Any]:
    """Serialise any registered intervention or ``Compose`` (see :func:`from_dict`)."""
    if isinstance(iv, Compose):
        return {"type": "Compose",
                "parts": [to_dict(p, tensors, f"{prefix}.{i}") for i, p in enumerate(iv.parts)]}
    if not isinstance(iv, _Serialisable):
        raise ConfigError(f"{type(iv).__name__} is not serialisable (not from mechunlearn.interventions).")
    return iv.to_dict(tensors, prefix)


def from_dict(d: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> Intervention:
    """Rebuild an intervention (or ``Compose``) written by :func:`to_dict`."""
    if not isinstance(d, dict) or "type" not in d:
        raise ConfigError(f"Not an intervention dict: {str(d)[:80]!r}.")
    if d["type"] == "Compose":
        return Compose(*[from_dict(p, tensors) for p in d["parts"]])
    cls = REGISTRY.get(d["type"])
    if cls is None:
        raise ConfigError(f"Unknown intervention type {d['type']!r}; known: {sorted(REGISTRY)}.")
    kwargs = {k: _decode(v, tensors) for k, v in d.items() if k != "type"}
    if isinstance(kwargs.get("positions"), list):
        kwargs["positions"] = tuple(kwargs["positions"])
    return cls(**kwargs)


def save(path: str | os.PathLike[str], interventions: list[Intervention],
         overwrite: bool = False) -> Path:
    """Write ``interventions`` to folder ``path`` (JSON + safetensors).

    Written by :func:`mechunlearn.outputs.output_folder` (atomic, package versions in
    ``.mechunlearn.json``; a folder holding other files is refused, see there).
    """
    from safetensors.torch import save_file

    from mechunlearn.outputs import output_folder

    tensors: dict[str, Tensor] = {}
    items = [to_dict(iv, tensors, str(i)) for i, iv in enumerate(interventions)]
    text = json.dumps({"format_version": 1, "interventions": items}, indent=1)
    with output_folder(path, "interventions", overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "interventions.safetensors"))
        (tmp / "interventions.json").write_text(text)
    return Path(path)


def load(path: str | os.PathLike[str]) -> list[Intervention]:
    """Read the list written by :func:`save`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    try:
        meta = json.loads((p / "interventions.json").read_text())
        tensors = load_file(str(p / "interventions.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise StoreError(f"Cannot read interventions from {p}: {e}. The files are missing or "
                         "corrupt: save them again.") from e
    return [from_dict(d, tensors) for d in meta["interventions"]]


register_decoder(from_dict)
