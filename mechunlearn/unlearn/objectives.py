"""Unlearning objectives: per-sample forget losses and retain regularisers.

Every objective maps a batch of forget items to a *per-sample* loss ``[n]`` (the loop takes a
weighted mean, so U2A weights plug in) and optionally adds its own retain term on top of the
loop's KL-to-reference term. Minimising the loss unlearns.

Notation: ``logp`` is the summed log-probability of a response, ``avg`` the per-token mean,
``ref`` the reference (pre-unlearning) model's value on the same tokens.

=============  =====================================================================
GA             ``avg``                                        (gradient ascent on NLL)
GradDiff       GA + ``retain_nll * NLL(retain)``
NPO            ``(2/beta) * softplus(beta * (logp - ref))``        (Zhang et al. 2024)
SimNPO         ``(2/beta) * softplus(beta * avg + gamma)``         (Fan et al. 2024)
RMU            ``mean_tok ||h - c*u||^2 / d`` at a Site; retain ``||h - h_ref||^2 / d``
Flip           ``softplus(-beta*((lp_good-ref_good) - (lp_bad-ref_bad))) + nll * NLL(good)/tok``
=============  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.lm import response_logprobs, token_kl  # noqa: F401 (re-exported)
from mechunlearn.sites import Site

# ---------------------------------------------------------------- pure loss functions


def ga_loss(avg_logp: Tensor) -> Tensor:
    """Gradient ascent: per-sample mean token log-prob ``[n] -> [n]`` (minimise to forget)."""
    return avg_logp


def npo_loss(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """NPO ``(2/beta) softplus(beta (logp - ref))``; ``[n], [n] -> [n]``. Equals
    ``(2/beta) ln 2`` when the model matches the reference."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp))


def simnpo_loss(avg_logp: Tensor, beta: float, gamma: float = 0.0) -> Tensor:
    """SimNPO ``(2/beta) softplus(beta * avg_logp + gamma)``: reference-free, length-normalised."""
    return (2.0 / beta) * F.softplus(beta * avg_logp + gamma)


def dpo_loss(lp_good: Tensor, lp_bad: Tensor, ref_good: Tensor, ref_bad: Tensor,
             beta: float) -> Tensor:
    """DPO ``softplus(-beta ((lp_good - ref_good) - (lp_bad - ref_bad)))``; all ``[n] -> [n]``."""
    return F.softplus(-beta * ((lp_good - ref_good) - (lp_bad - ref_bad)))


def rmu_loss(h: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-sample mean over masked tokens of ``||h - target||^2 / d``.

    ``h [n, pos, d]``, ``target [d]`` or ``[n, pos, d]``, ``mask [n, pos]`` -> ``[n]``.
    """
    sq = ((h - target) ** 2).mean(-1)
    m = mask.to(h.dtype)
    return (sq * m).sum(1) / m.sum(1).clamp_min(1.0)


# ---------------------------------------------------------------- objective configs


@dataclass(frozen=True)
class Objective:
    """Base: frozen config. ``needs_good``: forget items must carry a good response."""

    name: ClassVar[str] = "objective"
    needs_good: ClassVar[bool] = False
    needs_ref: ClassVar[bool] = False

    def forget(self, f: dict[str, Tensor]) -> Tensor:
        """Per-sample forget loss ``[n]`` from quantities ``f`` computed by the loop:
        ``logp``, ``ntok``, ``ref_logp`` (bad response); ``good_logp``, ``good_ntok``,
        ``ref_good_logp`` (good response); ``h`` and ``mask`` (RMU)."""
        raise NotImplementedError

    @property
    def hook(self) -> str | None:
        """Hook whose activation :meth:`forget` / :meth:`retain` need (``f["h"]``), or None."""
        return None

    def retain(self, r: dict[str, Tensor]) -> Tensor:
        """The objective's own retain term (scalar), added to the loop's KL-to-reference term.

        ``r`` holds, for a retain batch: ``logits [b, pos, V]``, ``ids [b, pos]``,
        ``mask [b, pos]`` (response tokens), ``attn [b, pos]`` (attention mask), ``h`` (the
        activation at :attr:`hook`, ``[b, pos, d]``, or None) and ``ref_h`` (the unedited
        model's activation there, or None). Default: no term (zero).
        """
        return r["logits"].new_zeros(())

    def to_dict(self) -> dict[str, Any]:
        """Name and fields."""
        return {"name": self.name, **{k: v for k, v in self.__dict__.items() if k != "site"}}


@dataclass(frozen=True)
class GradientAscent(Objective):
    """Raise the NLL of the forget responses (unbounded: pair with a retain term)."""

    name: ClassVar[str] = "ga"

    def forget(self, f: dict[str, Tensor]) -> Tensor:
        return ga_loss(f["logp"] / f["ntok"].clamp_min(1))


@dataclass(frozen=True)
class GradDiff(GradientAscent):
    """Gradient ascent on forget + ``retain_nll`` x NLL descent on retain."""

    name: ClassVar[str] = "graddiff"
    retain_nll: float = 1.0

    def retain(self, r: dict[str, Tensor]) -> Tensor:
        """``retain_nll`` x the retain responses' mean per-token NLL."""
        lp, nt = response_logprobs(r["logits"], r["ids"], r["mask"])
        return self.retain_nll * (-(lp / nt.clamp_min(1))).mean()


@dataclass(frozen=True)
class NPO(Objective):
    """Negative preference optimisation against the reference model."""

    name: ClassVar[str] = "npo"
    needs_ref: ClassVar[bool] = True
    beta: float = 0.1

    def __post_init__(self) -> None:
        _positive("beta", self.beta)

    def forget(self, f: dict[str, Tensor]) -> Tensor:
        return npo_loss(f["logp"], f["ref_logp"], self.beta)


@dataclass(frozen=True)
class SimNPO(Objective):
    """Reference-free, length-normalised NPO."""

    name: ClassVar[str] = "simnpo"
    beta: float = 2.5
    gamma: float = 0.0

    def __post_init__(self) -> None:
        _positive("beta", self.beta)

    def forget(self, f: dict[str, Tensor]) -> Tensor:
        return simnpo_loss(f["logp"] / f["ntok"].clamp_min(1), self.beta, self.gamma)


@dataclass(frozen=True)
class RMU(Objective):
    """Representation misdirection at ``site``: forget activations -> ``coef * u``.

    ``u`` is ``direction`` (``[d]`` or a Directions object's first basis row; the activation
    is pushed *along* it) or, when ``None``, a unit random vector drawn from ``seed``.
    Retain activations are pulled to the reference model's (weight ``retain_act``).
    """

    name: ClassVar[str] = "rmu"
    site: Site = Site("blocks.0.hook_resid_post", "all")
    coef: float = 6.5
    direction: Tensor | None = None
    seed: int = 0
    retain_act: float = 1.0

    def target(self, d: int) -> Tensor:
        """``coef * u`` as ``[d]`` float32."""
        u = self.direction
        u = getattr(u, "basis", u)
        if u is None:
            g = torch.Generator().manual_seed(self.seed)
            u = torch.rand(d, generator=g)
        u = u.detach().float().reshape(-1, u.shape[-1])[0]
        if u.shape[0] != d:
            raise ShapeError(f"RMU direction has d={u.shape[0]}, but {self.site.key} has d={d}.")
        return self.coef * u / u.norm().clamp_min(1e-12)

    @property
    def hook(self) -> str | None:
        return self.site.hook_name

    def forget(self, f: dict[str, Tensor]) -> Tensor:
        h = f["h"]
        return rmu_loss(h, self.target(h.shape[-1]).to(h), f["mask"])

    def retain(self, r: dict[str, Tensor]) -> Tensor:
        """``retain_act`` x mean over attended tokens of ``||h - h_ref||^2 / d``."""
        h, href = r.get("h"), r.get("ref_h")
        if h is None or href is None:
            return r["logits"].new_zeros(())
        am = r["attn"].to(h.dtype)
        return self.retain_act * (((h - href) ** 2).mean(-1) * am).sum() / am.sum()


@dataclass(frozen=True)
class Flip(Objective):
    """Swap chosen/rejected on forget pairs: DPO toward the good response + NLL on it."""

    name: ClassVar[str] = "flip"
    needs_good: ClassVar[bool] = True
    needs_ref: ClassVar[bool] = True
    beta: float = 0.1
    nll: float = 1.0

    def __post_init__(self) -> None:
        _positive("beta", self.beta)

    def forget(self, f: dict[str, Tensor]) -> Tensor:
        d = dpo_loss(f["good_logp"], f["logp"], f["ref_good_logp"], f["ref_logp"], self.beta)
        return d - self.nll * f["good_logp"] / f["good_ntok"].clamp_min(1)


OBJECTIVES: dict[str, type[Objective]] = {
    c.name: c for c in (GradientAscent, GradDiff, NPO, SimNPO, RMU, Flip)
}


def make_objective(name: str | Objective, **kw: Any) -> Objective:
    """An objective by name (``ga``, ``graddiff``, ``npo``, ``simnpo``, ``rmu``, ``flip``)."""
    if isinstance(name, Objective):
        return name
    if name not in OBJECTIVES:
        raise ConfigError(f"Unknown objective {name!r}; choose from {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name](**kw)


def _positive(name: str, v: float) -> None:
    if not v > 0:
        raise ConfigError(f"{name} must be > 0, got {v!r}.")
