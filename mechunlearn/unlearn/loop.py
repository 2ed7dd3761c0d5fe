"""``unlearn(model, forget, retain, objective)``: a seeded, reversible unlearning loop.

Each step minimises ``objective.forget`` (weighted mean over a forget batch) plus
``retain_weight * KL(reference || model)`` on a retain batch (plus the objective's own retain
term: GradDiff's NLL, RMU's activation match). Reference quantities (log-probs, retain
distributions, RMU activations) are computed once from the unedited weights before the first
step, so no model copy is needed. While the loop runs, transformers' tanh-GELU modules are
swapped for torch's fused kernel (:mod:`.fused`, self-checked, undone on exit).

**Two phases.** *Forget* runs until ``forget_metric(model) <= target`` (checked every
``eval_every`` steps), the retain KL exceeds ``kl_budget``, a user ``stop(row)`` returns True,
or ``steps`` run out. *Repair* then runs ``repair_steps`` more steps (``repair="both"``: the full
loss; ``"retain"``: the retain terms only). Stopping at the first step where the bad
behaviour is gone leaves damage; a short repair phase removes most of it (docs/unlearning.md).

With ``sam_rho > 0`` each step is sharpness-aware (:class:`UnlearnConfig`, ``sam_rho``): the
forget term's gradient is taken at weights moved up its own gradient (Fan et al.).

The returned :class:`UnlearnResult` holds the history (a DataFrame, one row per step, with
evaluation columns on evaluation steps) and an :class:`~mechunlearn.weights.EditHandle`
whose ``undo()`` restores every parameter bit for bit.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite
from mechunlearn.unlearn.config import UnlearnConfig, UnlearnResult
from mechunlearn.unlearn.data import Encode, rows, warn_overlap
from mechunlearn.unlearn.fused import fused_gelu
from mechunlearn.unlearn.guard import Guard, split_keep
from mechunlearn.unlearn.objectives import Objective, make_objective, response_logprobs, token_kl
from mechunlearn.unlearn.reference import _Data, forward, snapshot

__all__ = ["UnlearnConfig", "UnlearnResult", "forward", "snapshot", "unlearn"]

Metric = Callable[[Any], float]


def unlearn(model: Any, forget: Sequence[Any], retain: Sequence[Any],
            objective: str | Objective = "npo", config: UnlearnConfig | None = None, *,
            forget_metric: Metric | None = None, metrics: dict[str, Metric] | None = None,
            stop: Callable[[dict[str, Any]], bool] | None = None,
            weights: Tensor | Sequence[float] | None = None, encode: Encode | None = None,
            keep: Sequence[Any] | None = None, progress: bool = True) -> UnlearnResult:
    """Unlearn ``forget`` while keeping ``retain``; edits ``model`` in place.

    Args:
        model: a TransformerBridge with a tokenizer (or pass ``encode``).
        forget, retain: preference pairs, ``(prompt, response)`` or ``(prompt, bad, good)``
            (see :mod:`mechunlearn.unlearn.data`).
        objective: an :class:`Objective` or its name (``ga``, ``graddiff``, ``npo``,
            ``simnpo``, ``rmu``, ``flip``).
        forget_metric: ``f(model) -> float`` to drive early stopping (``<= config.target``);
            e.g. the bad-response rate on trigger prompts. Evaluated in the forget phase
            only (and in repair when the guard needs it to rank checkpoints).
        metrics: extra ``name -> f(model)`` recorded on evaluation steps.
        stop: ``stop(row) -> bool`` on each evaluation row (quality-based stopping).
        weights: ``[n_forget]`` non-negative sample weights (U2A); batches are drawn with
            probability proportional to them.
        encode: ``encode(tokenizer, prompts, responses) -> TokenBatch`` (e.g.
            ``toyworld.encode_pairs``); default :func:`mechunlearn.tokenize` on the pairs.
        keep: held-out data the guard watches (``(prompt, response)`` or pairs, never
            trained on); default: ``config.guard.holdout`` of ``retain``, held out.

    With ``config.guard`` the model ends at the guard's best checkpoint, not
    necessarily at the last step (``result.best_step``); see :mod:`.guard`.
    """
    cfg = config or UnlearnConfig()
    obj = make_objective(objective)
    t0 = time.perf_counter()
    if retain is None or len(retain) == 0:
        raise EmptyDataError("The retain set is empty; unlearning needs data to keep.")
    if cfg.guard is not None and keep is None:
        retain, keep = split_keep(retain, cfg.guard, cfg.seed)
    data = _Data(model, forget, retain, obj, encode)
    n_f = len(data.forget)
    w = _weights(weights, n_f)
    handle = snapshot(model)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = [p for p, _ in handle.saved if p.requires_grad]
    guard = (Guard(model, keep, encode, cfg.guard, params) if cfg.guard is not None and keep
             else None)
    if guard is not None:
        warn_overlap(data.forget, guard.items)
    n_repair = cfg.repair_steps if guard is None else (
        cfg.guard.max_repair_steps if cfg.guard.max_repair_steps is not None
        else cfg.repair_steps)
    n_r = len(data.retain)
    ev_rows = (torch.arange(n_r) if cfg.eval_retain is None or cfg.eval_retain >= n_r else
               torch.randperm(n_r, generator=torch.Generator().manual_seed(cfg.seed + 1))
               [: cfg.eval_retain].sort().values)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    hist: list[dict[str, Any]] = []
    stopped, total = "steps", cfg.steps + n_repair
    bar = tqdm(total=total, disable=not progress, desc=f"unlearn[{obj.name}]")
    step, phase = 0, "forget"
    fast = ExitStack()
    try:
        fast.enter_context(fused_gelu(model, *rows(data.rb, torch.arange(min(2, n_r)))[:2],
                                      forward))  # self-checked; undone on exit
        while step < total:
            if phase == "forget" and step >= cfg.steps:
                phase = "repair"
            fi = _draw(w, cfg.batch_size, g)
            ri = torch.randperm(len(data.retain), generator=g)[: cfg.retain_batch_size]
            use_forget = phase == "forget" or cfg.repair == "both"
            loss, row = _loss(model, data, obj, cfg, fi, w, ri, use_forget)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.sam_rho > 0 and use_forget:
                _sam(params, cfg.sam_rho, lambda fi=fi, ri=ri: _loss(
                    model, data, obj, cfg, fi, w, ri, True, False)[0])
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            step += 1
            bar.update(1)
            row.update(step=step, phase=phase, seconds=time.perf_counter() - t0)
            if step % cfg.eval_every == 0 or step == total or (phase == "forget" and step == cfg.steps):
                # the stop metric stops the forget phase (and ranks the guard's
                # checkpoints); the plain loop's repair phase does not need it
                fm = forget_metric if phase == "forget" or guard is not None else None
                row.update(_evaluate(model, data, fm, metrics, ev_rows))
                if guard is not None:
                    row.update(guard.measure(model))
                    guard.consider(row, phase, cfg.target, step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()
                                 if k in ("loss", "forget_metric", "retain_kl_eval")})
                if phase == "forget":
                    why = _why_stop(row, cfg, forget_metric, stop)
                    if why is None and guard is not None and guard.over_budget(row):
                        why = "guard"
                    if why:
                        stopped, phase = why, "repair"
                        total = step + n_repair
                        bar.total = total
                elif guard is not None and guard.repair_done():
                    total = step
            hist.append(row)
        best = guard.restore() if guard is not None else None
    except BaseException:
        handle.undo()
        raise
    finally:
        fast.close()
        bar.close()
        model.zero_grad(set_to_none=True)
    hist_df = pd.DataFrame(hist)
    summary = _guard_summary(guard, hist_df, best)
    if summary.get("damage"):
        warnings.warn(
            f"unlearn: every checkpoint changed more than {cfg.guard.max_change:.0%} of the "
            f"held-out kept tokens (best: {summary['keep_agree_best']:.1%} unchanged at step "
            f"{best}); the model was rolled back to the least damaging one. Screen the forget "
            "set (screen_forget), lower lr or raise retain_weight.", stacklevel=2)
    return UnlearnResult(handle, hist_df, stopped, step, time.perf_counter() - t0,
                         obj.to_dict(), best, summary)


def _sam(params: list[Tensor], rho: float, forget_fn: Callable[[], Tensor]) -> None:
    """Sharpness-aware forget term: add ``g_f(p + rho * g_f / ||g_f||) - g_f(p)`` to each
    ``p.grad`` (``g_f``: gradient of ``forget_fn()``, norm over all parameters), so the
    forget term's gradient is taken at the moved weights and the rest at ``p``; the weights
    are restored afterwards."""
    live = [p for p in params if p.grad is not None]

    def grads() -> list[Tensor]:
        g = torch.autograd.grad(forget_fn(), live, allow_unused=True)
        return [torch.zeros_like(p) if x is None else x for p, x in zip(live, g)]

    g0 = grads() if live else []
    norm = torch.norm(torch.stack([g.norm() for g in g0])) if g0 else None
    if norm is None or not float(norm) > 0:
        return
    eps = [g * (rho / norm) for g in g0]
    with torch.no_grad():
        for p, e in zip(live, eps):
            p.add_(e)
    try:
        g1 = grads()
    finally:
        with torch.no_grad():
            for p, e in zip(live, eps):
                p.sub_(e)
    for p, a, b in zip(live, g0, g1):
        p.grad.add_(b - a)


def _guard_summary(guard: Guard | None, hist: pd.DataFrame, best: int | None) -> dict[str, Any]:
    if guard is None or "keep_kl" not in hist:
        return {}
    ev = hist.dropna(subset=["keep_kl"])
    at = ev[ev.step == best].iloc[-1] if best is not None and (ev.step == best).any() else None
    out: dict[str, Any] = {"n_keep": len(guard.items), "best_step": best,
                           "damage": at is None or not guard.acceptable(at.to_dict())}
    for k in ("keep_agree", "keep_kl", "keep_logp"):
        out[f"{k}_best"] = None if at is None else float(at[k])
        out[f"{k}_last"] = float(ev[k].iloc[-1])
    return out


def _weights(weights: Tensor | Sequence[float] | None, n: int) -> Tensor:
    if weights is None:
        return torch.ones(n)
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.shape[0] != n:
        raise ShapeError(f"weights has {w.shape[0]} entries for {n} forget items.")
    check_finite("weights", w)
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ConfigError("weights must be >= 0 with a positive sum.")
    return w


def _draw(w: Tensor, b: int, g: torch.Generator) -> Tensor:
    nz = int((w > 0).sum())
    if nz <= b:
        return torch.nonzero(w > 0).flatten()
    return torch.multinomial(w, b, replacement=False, generator=g)


def _loss(model: Any, data: _Data, obj: Objective, cfg: UnlearnConfig, fi: Tensor, w: Tensor,
          ri: Tensor, use_forget: bool, retain: bool = True) -> tuple[Tensor, dict[str, Any]]:
    row: dict[str, Any] = {}
    total = torch.zeros(())
    if use_forget:
        f = data.quantities(model, fi)
        logp, ntok = f["logp"], f["ntok"]
        per = obj.forget(f)
        wb = w[fi] if len(fi) == int((w > 0).sum()) else torch.ones(len(fi))
        fl = (per * wb).sum() / wb.sum()
        total = total + fl
        row["forget_loss"] = float(fl.detach())
        row["forget_logp"] = float((logp.detach() / ntok.clamp_min(1)).mean())
    if not retain:  # the forget term alone (sharpness-aware steps)
        return total, row
    ids, am, m = rows(data.rb, ri)
    lg, h = forward(model, ids, am, data.hook)
    kl = token_kl(data.ref_rows(ri, ids.shape[1]), lg, am.bool()).mean()
    total = total + cfg.retain_weight * kl
    row["retain_kl"] = float(kl.detach())
    href = data.ref_rows(ri, ids.shape[1], h=True) if h is not None and data.ref_h else None
    total = total + obj.retain({"logits": lg, "ids": ids, "mask": m, "attn": am, "h": h,
                                "ref_h": href})
    row["loss"] = float(total.detach())
    return total, row


@torch.no_grad()
def _evaluate(model: Any, data: _Data, forget_metric: Metric | None,
              metrics: dict[str, Metric] | None, ev_rows: Tensor, chunk: int = 64
              ) -> dict[str, float]:
    out: dict[str, float] = {}
    kls, lps = [], []
    for s in range(0, len(ev_rows), chunk):
        idx = ev_rows[s: s + chunk]
        ids, am, _ = rows(data.rb, idx)
        kls.append(token_kl(data.ref_rows(idx, ids.shape[1]), forward(model, ids, am)[0],
                            am.bool()))
    for s in range(0, len(data.forget), chunk):
        ids, am, m = rows(data.fb, torch.arange(s, min(s + chunk, len(data.forget))))
        lp, nt = response_logprobs(forward(model, ids, am)[0], ids, m)
        lps.append(lp / nt.clamp_min(1))
    out["retain_kl_eval"] = float(torch.cat(kls).mean())
    out["forget_logp_eval"] = float(torch.cat(lps).mean())
    if forget_metric is not None:
        out["forget_metric"] = float(forget_metric(model))
    for k, f in (metrics or {}).items():
        out[k] = float(f(model))
    return out


def _why_stop(row: dict[str, Any], cfg: UnlearnConfig, forget_metric: Metric | None,
              stop: Callable[[dict[str, Any]], bool] | None) -> str | None:
    if forget_metric is not None and row["forget_metric"] <= cfg.target:
        return "target"
    if cfg.kl_budget is not None and row["retain_kl_eval"] > cfg.kl_budget:
        return "kl_budget"
    if stop is not None and stop(row):
        return "stop_fn"
    return None
