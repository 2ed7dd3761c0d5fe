"""Guard against collateral damage during unlearning, without ground truth.

An unlearning run can remove the bad behaviour and break ordinary answers at the same time
(an imprecise, attributed forget set; an objective that destroys the model), and the forget
metric alone does not notice. The guard holds out a slice of the data the user keeps (never
trained on) and, on every evaluation step of :func:`mechunlearn.unlearn.unlearn`, measures
at the positions that predict the held-out responses (teacher forcing; the original model's
log-probs are computed once, before the first step):

* ``keep_agree``: share of those positions where the model's top-1 token is the original
  model's: a behaviour-level, scale-free measure (1.0 = the kept answers are unchanged);
* ``keep_kl``: mean per-token ``KL(original || model)``, nats/token;
* ``keep_logp``: the held-out responses' mean per-token log-prob.

**Selection.** A checkpoint is *acceptable* when ``keep_agree >= 1 - max_change``. The guard
keeps a copy of the weights at the latest acceptable evaluation step whose forget metric is
at the target (``<= target + tolerance``; later steps forgot more deeply); while there is
none, the evaluation step with the lowest forget metric among acceptable ones, else the
least damaging one (highest ``keep_agree``). The forget phase stops ("guard") when a step is
not acceptable; the repair phase stops after ``patience`` unacceptable evaluations in a row;
then the model is rolled back to the kept checkpoint, and ``damage`` in the result says
whether even that one changed more than ``max_change`` of the kept tokens. Without a forget
metric, the forget responses' log-prob must stay at or below its value at the end of the
forget phase. ``max_change`` is a tolerance on behaviour (default 2 % of kept tokens), not a
number fitted to a world; KL is reported beside it, not used to decide, because its scale
depends on the model (a KL that is 7x its minimum can still leave every answer unchanged).
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
    keep set when no ``keep`` data is passed to ``unlearn``; ``max_change``: the share of
    kept tokens whose top-1 prediction may change (acceptability); ``patience``:
    unacceptable repair evaluations in a row before the repair phase stops;
    ``max_repair_steps``: repair length (default ``repair_steps``); ``tolerance``: slack on
    the forget target (and, with no forget metric, on the forget responses' log-prob,
    nats/token); ``kl_budget``: also stop the forget phase when ``keep_kl`` exceeds it.
    """

    holdout: float = 0.25
    max_holdout: int = 64
    max_change: float = 0.02
    patience: int = 2
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
        if not 0.0 <= self.max_change < 1.0:
            raise ConfigError(f"GuardConfig.max_change must be in [0, 1), got {self.max_change!r}.")
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
        self.best_key: tuple[float, float, float] = (math.inf, math.inf, math.inf)
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
        kls, lps, agree, j = [], [], [], 0
        for lp, m in self._batches(model):
            ids = rows(self.tb, torch.arange(j, j + len(lp)))[0][:, 1:]
            for r, mm, tok in zip(lp, m, ids):
                ref, cur = self.ref[j], r[mm]
                kls.append((ref.exp() * (ref - cur)).sum(-1).mean())
                lps.append(cur.gather(-1, tok[mm][:, None]).mean())
                agree.append((cur.argmax(-1) == ref.argmax(-1)).float())
                j += 1
        return {"keep_agree": float(torch.cat(agree).mean()),
                "keep_kl": float(torch.stack(kls).mean()),
                "keep_logp": float(torch.stack(lps).mean())}

    def acceptable(self, row: dict[str, Any]) -> bool:
        """True when at most ``max_change`` of the kept tokens changed their top-1 token."""
        return row["keep_agree"] >= 1.0 - self.cfg.max_change

    def consider(self, row: dict[str, Any], phase: str, target: float, step: int) -> None:
        """Copy the weights if ``row`` (an evaluation row with ``keep_agree``) is the best so
        far: acceptable rows by forget metric, unacceptable ones (ranked after) by agreement;
        ties go to the later step."""
        fm = row.get("forget_metric")
        if fm is None or (isinstance(fm, float) and math.isnan(fm)):
            if phase == "forget":  # no forget metric: only the end of the forget phase counts
                self.forget_end_logp = row["forget_logp_eval"]
                self.best_key = (math.inf, math.inf, math.inf)
                bucket = 0.0
            else:
                ok = row["forget_logp_eval"] <= (self.forget_end_logp or 0.0) + self.cfg.tolerance
                bucket = 0.0 if ok else math.inf
        else:
            bucket = 0.0 if fm <= target + self.cfg.tolerance else float(fm)
        good = self.acceptable(row)
        key = (0.0, bucket, 0.0) if good else (1.0, -float(row["keep_agree"]), bucket)
        if key <= self.best_key:
            self.best_key, self.best_step = key, step
            self.best = [p.detach().clone() for p in self.params]
        self.stale = 0 if good else self.stale + 1

    def repair_done(self) -> bool:
        """True after ``patience`` unacceptable repair evaluations in a row."""
        return self.stale >= self.cfg.patience

    def over_budget(self, row: dict[str, Any]) -> bool:
        """True when the step is not acceptable or ``keep_kl`` exceeds the budget."""
        return not self.acceptable(row) or (self.cfg.kl_budget is not None
                                            and row["keep_kl"] > self.cfg.kl_budget)

    @torch.no_grad()
    def restore(self) -> int | None:
        """Roll the trained parameters back to the best checkpoint; return its step."""
        if self.best is not None:
            for p, b in zip(self.params, self.best):
                p.copy_(b)
        return self.best_step
