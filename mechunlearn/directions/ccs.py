"""Contrast-Consistent Search (Burns et al. 2022) on contrast pairs, in torch.

A linear probe p(x) = σ(w·x + b) is trained without labels on pairs (a_i, b_i) of
logically opposite inputs to minimise

    L = mean_i (p(a_i) − (1 − p(b_i)))²  +  mean_i min(p(a_i), p(b_i))²

(consistency + confidence), after centring the a's and the b's separately (so the direction
that merely tells "first member" from "second member" is removed). Several random restarts
are trained at once; the one with the lowest loss wins. Labels are used only to orient w
and to measure held-out AUC.

Two ways to call it:

* ``ccs(x_pos, x_neg, labels=t)``: ``x_pos[i]``, ``x_neg[i]`` are the two halves of contrast
  pair i ("... Yes" / "... No"), ``t[i]`` = 1 if the ``x_pos`` half is the true one.
* ``ccs(x_pos, x_neg)`` (bias finding): ``x_pos[i]`` (reinforced) and ``x_neg[i]``
  (discouraged) answer the same prompt i. Each pair's order is flipped by a seeded coin so
  the reinforced/discouraged difference is not centred away; the coin is the label.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from mechunlearn.directions._fit import blas_threads, check_evidence_args
from mechunlearn.directions.base import (
    Directions,
    as_matrix,
    fingerprint_of,
    groups_array,
    near_constant_dims,
    site_of,
    warn_if_null,
)
from mechunlearn.directions.evidence import N_SPLITS, auc, evaluate
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError


def train_ccs(
    A: np.ndarray,
    B: np.ndarray,
    n_restarts: int = 10,
    epochs: int = 200,
    lr: float = 0.1,
    weight_decay: float = 0.01,
    normalize: Literal["mean", "std"] = "mean",
    seed: int = 0,
) -> tuple[np.ndarray, float, list[float]]:
    """Train CCS on pair halves ``A [m, d]``, ``B [m, d]``.

    Returns:
        unit direction ``[d]`` in raw feature space (sign arbitrary), the winning loss, and
        the final loss of every restart.
    """
    A = A - A.mean(0)
    B = B - B.mean(0)
    scale = np.ones(A.shape[1])
    if normalize == "std":
        both = np.concatenate([A, B])
        keep = ~near_constant_dims(both)
        scale = np.where(keep, both.std(0), np.inf)
    A, B = A / scale, B / scale
    rms = float(np.sqrt((np.concatenate([A, B]) ** 2).sum(1).mean())) or 1.0
    a = torch.from_numpy(A / rms).float()
    b = torch.from_numpy(B / rms).float()
    g = torch.Generator().manual_seed(seed)
    d = a.shape[1]
    W = (torch.randn(n_restarts, d, generator=g) / d**0.5).requires_grad_(True)
    bias = torch.zeros(n_restarts, requires_grad=True)
    opt = torch.optim.AdamW([W, bias], lr=lr, weight_decay=weight_decay)

    def losses() -> torch.Tensor:
        pa = torch.sigmoid(a @ W.T + bias)
        pb = torch.sigmoid(b @ W.T + bias)
        return ((pa - (1 - pb)) ** 2).mean(0) + (torch.minimum(pa, pb) ** 2).mean(0)

    for _ in range(epochs):
        opt.zero_grad()
        losses().sum().backward()
        opt.step()
    with torch.no_grad():
        final = losses().double().numpy()
    best = int(np.argmin(final))
    w = W[best].detach().double().numpy() / scale
    w[~np.isfinite(w)] = 0.0
    norm = float(np.linalg.norm(w))
    if norm == 0:
        raise ConfigError("CCS converged to the zero vector; the pairs carry no signal.")
    return w / norm, float(final[best]), final.tolist()


def ccs(
    x_pos: Any,
    x_neg: Any,
    *,
    labels: Any = None,
    n_restarts: int = 10,
    epochs: int = 200,
    lr: float = 0.1,
    weight_decay: float = 0.01,
    normalize: Literal["mean", "std"] = "mean",
    groups: Any = None,
    site: Any = None,
    n_splits: int = N_SPLITS,
    n_permutations: int = 20,
    alpha: float = 0.05,
    seed: int = 0,
) -> Directions:
    """CCS direction from paired features ``x_pos [n, d]`` and ``x_neg [n, d]`` (see module).

    Args:
        labels: ``[n]`` truth of the ``x_pos`` half; omit for bias finding (random order).
        n_restarts, epochs, lr, weight_decay: optimisation (AdamW, full batch).
        normalize: ``"mean"`` (centre each half) or ``"std"`` (also divide by per-dim std;
            near-constant dims are dropped).
        groups: ``[n]`` group ids of the pairs for grouped held-out evaluation.
        n_splits, n_permutations, alpha, seed: evidence (pairs are the samples).

    Returns:
        :class:`Directions` oriented so the reinforced / true half scores higher; scores
        ``loss``, ``restart_losses``, ``mean_diff``, ``train_auc`` (pair AUC) and evidence.
    """
    check_evidence_args(n_splits, n_permutations, alpha)
    with blas_threads():
        return _ccs(x_pos, x_neg, labels, n_restarts, epochs, lr, weight_decay, normalize,
                    groups, site, n_splits, n_permutations, alpha, seed)


def _ccs(x_pos: Any, x_neg: Any, labels: Any, n_restarts: int, epochs: int, lr: float,
         weight_decay: float, normalize: str, groups: Any, site: Any, n_splits: int,
         n_permutations: int, alpha: float, seed: int) -> Directions:
    if normalize not in ("mean", "std"):
        raise ConfigError(f"normalize must be 'mean' or 'std', got {normalize!r}.")
    if n_restarts < 1 or epochs < 1:
        raise ConfigError(f"n_restarts and epochs must be >= 1, got {n_restarts}, {epochs}.")
    P, N = as_matrix("X+ (x_pos)", x_pos), as_matrix("X− (x_neg)", x_neg)
    if P.shape != N.shape:
        raise ShapeError(f"CCS needs paired halves of equal shape, got {P.shape} and {N.shape}.")
    if len(P) < 2 * n_splits:
        raise EmptyDataError(f"CCS got {len(P)} pairs; need at least {2 * n_splits}.")
    if labels is None:
        t = np.random.default_rng(seed).random(len(P)) < 0.5
        if t.all() or not t.any():
            t[0] = not t[0]
        first, second = np.where(t[:, None], P, N), np.where(t[:, None], N, P)
    else:
        t = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if t.shape != (len(P),):
            raise ShapeError(f"labels must be [n] = [{len(P)}], got shape {t.shape}.")
        t = t.astype(bool)
        first, second = P, N
    g = groups_array(groups, len(P))
    diff = first - second

    def fit_dir(idx: np.ndarray, tt: np.ndarray) -> tuple[np.ndarray, float, list[float]]:
        w, loss, all_l = train_ccs(first[idx], second[idx], n_restarts, epochs, lr,
                                   weight_decay, normalize, seed)
        s = diff[idx] @ w
        if s[tt[idx]].mean() < s[~tt[idx]].mean():
            w = -w
        return w, loss, all_l

    def fit(train: np.ndarray, tt: np.ndarray):
        w = fit_dir(train, tt)[0]
        return lambda test: diff[test] @ w

    w, loss, all_l = fit_dir(np.arange(len(P)), t)
    true_half = np.where(t[:, None], first, second)
    false_half = np.where(t[:, None], second, first)
    scores: dict[str, Any] = {
        "loss": [loss], "restart_losses": all_l,
        "mean_diff": [float((true_half @ w).mean() - (false_half @ w).mean())],
        "train_auc": [auc(diff @ w, t)],
    }
    ev = evaluate(fit, t, g, n_splits, n_permutations, seed)
    scores.update(ev.as_scores())
    scores["fold_aucs"], scores["null_aucs"] = list(ev.fold_aucs), list(ev.null_aucs)
    settings = {"n_restarts": n_restarts, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                "normalize": normalize, "paired_labels": labels is not None, "n_splits": n_splits,
                "n_permutations": n_permutations, "alpha": alpha, "seed": seed,
                "grouped": g is not None, "n_pairs": len(P)}
    dirs = Directions(w[None], scores, site_of(x_pos, x_neg, site=site), "ccs", settings,
                      fingerprint=fingerprint_of(x_pos, x_neg))
    warn_if_null(dirs)
    return dirs
