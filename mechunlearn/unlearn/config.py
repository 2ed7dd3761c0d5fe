"""Settings and result of the unlearning loop (:func:`mechunlearn.unlearn.unlearn`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from mechunlearn.errors import ConfigError
from mechunlearn.unlearn.guard import GuardConfig
from mechunlearn.weights import EditHandle


@dataclass(frozen=True, kw_only=True)
class UnlearnConfig:
    """Loop settings (defaults measured on the toy world; see docs/unlearning.md).

    ``eval_retain``: retain rows (a fixed seeded sample) whose KL to the reference is
    measured on evaluation steps (``retain_kl_eval``); ``None``: all of them. The KL of
    every retain row on every evaluation cost more than the optimiser steps (1.3 s per
    evaluation for 256 rows vs 0.6 s per step on the toy world).

    ``target``: the forget phase stops at the first evaluation with ``forget_metric <=
    target``. Default 0.05 (a share when the metric is a share of bad prompts, as in the
    diagnose chain): on the toy world `hard` seed 0 the last 1 of 44 attribution-half bad
    prompts took 25 of the 35 forget steps at target 0, while the repair phase (which keeps
    the forget term, ``repair="both"``) and the held-out prompts did not need them (held-out
    bad rate 0.00 either way). ``repair_steps``: 5 (was 15): ordinary-prompt KL to the gold
    model 1.00x the tuned model's after 5, 1.05-1.15x after 10-15 on that seed
    (scripts/fast_unlearning.py, docs/unlearning.md "Fast unlearning").

    ``sam_rho``: sharpness-aware steps (SAM, Foret et al., "Sharpness-Aware Minimization for
    Efficiently Improving Generalization", arXiv:2010.01412; for unlearning against
    relearning attacks, Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks",
    arXiv:2502.05374) when > 0: as in Fan et al., the forget term's gradient is taken at the
    weights moved by ``sam_rho`` (L2 norm over all trained parameters) up the forget term's
    own gradient, the retain terms' at the unmoved weights; two more forward and backward
    passes of the forget batch per step (none in a ``repair="retain"`` phase). Default 0.0
    (plain steps). Measured on the toy world: no better against relearning
    (docs/robustness.md, "Relearning resistance of the fast edits").

    ``guard``: the collateral-damage guard (:class:`~mechunlearn.unlearn.guard.GuardConfig`:
    held-out keep data, stop and roll back when kept answers change); ``None`` (default) is
    the plain loop. Opt-in because on the measured worlds it kept ordinary answers but then
    removed little of the bad behaviour (docs/unlearning.md, "guarded unlearning").
    """

    steps: int = 60
    lr: float = 1e-3
    batch_size: int = 16
    retain_batch_size: int = 32
    retain_weight: float = 1.0
    eval_every: int = 5
    target: float = 0.05
    kl_budget: float | None = None
    repair_steps: int = 5
    repair: Literal["both", "retain"] = "both"
    max_grad_norm: float = 1.0
    seed: int = 0
    guard: GuardConfig | None = None
    eval_retain: int | None = 64
    sam_rho: float = 0.0

    def __post_init__(self) -> None:
        for f in ("steps", "batch_size", "retain_batch_size", "eval_every"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ConfigError(f"{f} must be an int >= 1, got {getattr(self, f)!r}.")
        if self.repair_steps < 0 or self.lr <= 0 or self.retain_weight < 0:
            raise ConfigError("repair_steps and retain_weight must be >= 0 and lr > 0.")
        for f in ("lr", "retain_weight", "target", "max_grad_norm"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"UnlearnConfig.{f} must be a finite number, got {v!r}.")
        if not (isinstance(self.sam_rho, (int, float)) and math.isfinite(self.sam_rho)
                and self.sam_rho >= 0):
            raise ConfigError(f"sam_rho must be a finite number >= 0 (0: plain steps), got "
                              f"{self.sam_rho!r}.")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}.")
        if self.kl_budget is not None and not (math.isfinite(self.kl_budget)
                                               and self.kl_budget > 0):
            raise ConfigError(f"kl_budget must be a finite number > 0 or None, got "
                              f"{self.kl_budget!r}.")
        if self.repair not in ("both", "retain"):
            raise ConfigError(f"repair must be 'both' or 'retain', got {self.repair!r}.")
        if self.eval_retain is not None and (not isinstance(self.eval_retain, int)
                                             or self.eval_retain < 1):
            raise ConfigError(f"eval_retain must be an int >= 1 or None, got "
                              f"{self.eval_retain!r}.")
        if self.guard is not None and not isinstance(self.guard, GuardConfig):
            raise ConfigError(f"guard must be a GuardConfig or None, got {self.guard!r}.")


@dataclass(frozen=True)
class UnlearnResult:
    """History (DataFrame), why the forget phase stopped, steps, seconds, and the undo handle.

    With the guard: ``best_step`` (the evaluation step the weights were rolled back to) and
    ``guard`` (``n_keep``; ``keep_agree``/``keep_kl``/``keep_logp`` at that step and at the
    last step; ``damage``: even that step changed more than ``max_change`` of kept tokens).
    """

    handle: EditHandle = field(repr=False)
    history: pd.DataFrame = field(repr=False)
    stopped: str
    steps: int
    seconds: float
    objective: dict[str, Any]
    best_step: int | None = None
    guard: dict[str, Any] = field(default_factory=dict)

    def undo(self) -> None:
        """Restore the model's weights as they were before :func:`unlearn`."""
        self.handle.undo()

    def last(self) -> dict[str, Any]:
        """The last evaluation row of the history."""
        ev = self.history.dropna(subset=["retain_kl_eval"])
        return ev.iloc[-1].to_dict() if len(ev) else {}
