"""Guard against collateral damage during unlearning, without ground truth.

An unlearning run can remove the bad behaviour and break ordinary answers at the same time
(an imprecise, attributed forget set; an objective that destroys the model), and the forget
metric alone does not notice. The guard holds out a slice of the data the user keeps (never
trained on) and, on every evaluation step of :func:`mechunlearn.unlearn.unlearn`, measures

* ``keep_kl``: mean per-token ``KL(original || model)`` at the positions that predict the
  held-out responses (the original model's log-probs are computed once, before the first
  step);
* ``keep_logp``: the held-out responses' mean per-token log-prob (its drop is the damage in
  the likelihood the user cares about).

It keeps a copy of the best weights seen so far: among evaluation steps whose forget metric is
at the target (``<= target + tolerance``), the one with the lowest ``keep_kl``; while none is,
the lowest forget metric (ties: lowest ``keep_kl``). Without a forget metric, the forget
responses' log-prob must stay at or below its value at the end of the forget phase. The
repair phase stops after ``patience`` evaluations without a better checkpoint, or at
``max_repair_steps``; then the model is rolled back to the best checkpoint. An optional
``kl_budget`` on ``keep_kl`` also stops the forget phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError
from mechunlearn.tokens import model_tokenizer
from mechunlearn.unlearn.data import Encode, as_items, encode_items, rows
from mechunlearn.unlearn.reference import forward


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """Collateral-damage guard of the unlearning loop (see the module docstring).

    ``holdout``/``max_holdout``: share (and cap) of the retain set held out as the guard's
    keep set when no ``keep`` data is passed to ``unlearn``; ``patience``: evaluations
    without a better checkpoint before the repair phase stops; ``max_repair_steps``: repair
    cap (default ``2 * repair_steps``); ``tolerance``: slack on the forget target (and, with
    no forget metric, on the forget responses' log-prob, nats/token); ``kl_budget``: stop the
    forget phase when ``keep_kl`` exceeds it (nats/token; ``None``: no budget).
    """

    holdout: float = 0.25
    max_holdout: int = 64
    patience: int = 3
    max_repair_steps: int | None = None
    tolerance: float = 0.0
    kl_budget: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"GuardConfig.holdout must be in (0, 1), got {self.holdout!r}.")
        if self.max_holdout < 1 or self.patience < 1:
            raise ConfigError("GuardConfig.max_holdout and patience must be >= 1.")
        if self.max_repair_steps is not None and self.max_repair_steps < 0:
            raise ConfigError("GuardConfig.max_repair_steps must be >= 0 or None.")
        if self.tolerance < 0 or (self.kl_budget is not None and not self.kl_budget > 0):
            raise ConfigError("GuardConfig.tolerance must be >= 0 and kl_budget > 0 or None.")


def split_keep(retain: Sequence[Any], cfg: GuardConfig, seed: int = 0
               ) -> tuple[list[Any], list[Any]]:
    """(retain to train on, held-out keep set): a seeded ``holdout`` share, at most
    ``max_holdout``, at least one item each; with fewer than 4 retain items, all of them
    serve both roles (too few to hold any out)."""
    items = list(retain)
    if len(items) < 4:
        return items, items
    n = min(cfg.max_holdout, max(1, round(cfg.holdout * len(items))))
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n])
    return ([x for i, x in enumerate(items) if i not in held], [items[i] for i in perm[:n]])


class Guard:
    """Measures damage on held-out keep data and keeps the best checkpoint.

    ``keep``: items accepted by :func:`mechunlearn.unlearn.data.as_items` (retain role);
    ``params``: the parameters the loop trains (their values are copied on each new best).
    """

    def __init__(self, model: Any, keep: Sequence[Any], encode: Encode | None,
                 cfg: GuardConfig, params: list[Tensor], chunk: int = 64) -> None:
        self.cfg, self.params, self.chunk = cfg, params, chunk
        self.items = as_items(keep, "keep")
        self.tb = encode_items(model_tokenizer(model), self.items, encode)
        self.ref: list[Tensor] = []
        with torch.no_grad():
            for lp, m in self._batches(model):
                self.ref.extend(r[mm] for r, mm in zip(lp, m))
        self.best: list[Tensor] | None = None
        self.best_key: tuple[float, float] = (math.inf, math.inf)
        self.best_step: int | None = None
        self.stale = 0
        self.forget_end_logp: float | None = None

    def _batches(self, model: Any):
        for s in range(0, len(self.items), self.chunk):
            ids, am, m = rows(self.tb, torch.arange(s, min(s + self.chunk, len(self.items))))
            lp = torch.log_softmax(forward(model, ids, am)[0].float(), -1)[:, :-1]
            yield lp, m[:, 1:]

    @torch.no_grad()
    def measure(self, model: Any) -> dict[str, float]:
        """``keep_kl`` (nats/token, vs the original model) and ``keep_logp`` on the keep set."""
        kls, lps, j = [], [], 0
        for lp, m in self._batches(model):
            ids = rows(self.tb, torch.arange(j, j + len(lp)))[0][:, 1:]
            for r, mm, tok in zip(lp, m, ids):
                ref = self.ref[j]
                kls.append((ref.exp() * (ref - r[mm])).sum(-1).mean())
                lps.append(r[mm].gather(-1, tok[mm][:, None]).mean())
                j += 1
        return {"keep_kl": float(torch.stack(kls).mean()), "keep_logp": float(torch.stack(lps).mean())}

    def consider(self, row: dict[str, Any], phase: str, target: float, step: int) -> None:
        """Copy the weights if ``row`` (an evaluation row with ``keep_kl``) is the best so far."""
        fm = row.get("forget_metric")
        if fm is None or (isinstance(fm, float) and math.isnan(fm)):
            if phase == "forget":
                self.forget_end_logp = row["forget_logp_eval"]
                bucket = 0.0
            elif row["forget_logp_eval"] <= (self.forget_end_logp or 0.0) + self.cfg.tolerance:
                bucket = 0.0
            else:
                bucket = math.inf
            if phase == "forget":  # no forget metric: only the end of the forget phase counts
                self.best_key = (math.inf, math.inf)
        else:
            bucket = 0.0 if fm <= target + self.cfg.tolerance else float(fm)
        key = (bucket, float(row["keep_kl"]))
        if key < self.best_key:
            self.best_key, self.best_step, self.stale = key, step, 0
            self.best = [p.detach().clone() for p in self.params]
        elif phase == "repair":
            self.stale += 1

    def repair_done(self) -> bool:
        """True after ``patience`` repair evaluations without a better checkpoint."""
        return self.stale >= self.cfg.patience

    def over_budget(self, row: dict[str, Any]) -> bool:
        """True when ``keep_kl`` exceeds the configured budget."""
        return self.cfg.kl_budget is not None and row["keep_kl"] > self.cfg.kl_budget

    @torch.no_grad()
    def restore(self) -> int | None:
        """Roll the trained parameters back to the best checkpoint; return its step."""
        if self.best is not None:
            for p, b in zip(self.params, self.best):
                p.copy_(b)
        return self.best_step
