"""Edits that hold downstream: multi-Site projection / LEACE, iterated until probes fail.

An edit at one hook point leaves the concept for later layers to recompute. The fix here is to
edit *every* Site from layer L on, each fitted on features that already carry the earlier
Sites' edits (so layer L+1's direction is the one that layer L+1 recomputes), and to iterate:

1. :func:`fit_sites`: one pass in forward order: at each Site, fit a difference-of-means
   direction (``finder="mean_diff"``, removed by ``Project``) or a LEACE eraser
   (``finder="leace"``, applied by ``Erase``) on the edited features, then add it.
2. :func:`fit_erasure`: rounds of: at each Site in forward order, train a linear and an MLP
   probe on a fitting split of the *train* data and score them on a validation split (never on
   the test data). Where the linear probe is above ``linear_target``, project out the new
   difference of means; where the MLP probe is above ``mlp_target``, project out
   ``quadratic_k`` *covariance directions* (:func:`covariance_directions`). Stop when every
   Site is below both targets or after ``max_rounds``; then a closing forward pass adds the
   difference of means wherever earlier Sites' new edits moved the class means apart again,
   so a linear probe trained on the edited train data is at chance at every Site.

**Quadratic erasure without labels.** ``concept_erasure.QuadraticEraser`` (optimal transport
of each class to a barycenter) needs each sample's label at run time, which a deployed model
does not have. After the means are equal, what a quadratic (and much of what an MLP) probe
reads is the difference between the class covariances; :func:`covariance_directions` finds the
directions where it is largest in the whitened space and the edit projects them out, so it
stays a label-free linear projection (cost: more removed directions, reported as KL).

Sources: Ravfogel et al., "Null It Out: Guarding Protected Attributes by Iterative Nullspace
Projection" (arXiv:2004.07667); Belrose et al., "LEACE: Perfect linear concept erasure in
closed form" (arXiv:2306.03819); Arditi et al., "Refusal in Language Models Is Mediated by a
Single Direction" (arXiv:2406.11717) for ablating a direction at every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from mechunlearn.directions.base import near_constant_dims
from mechunlearn.directions.leace import fit_eraser
from mechunlearn.erasure.probes import probe_accuracy
from mechunlearn.erasure.report import Contrast, _contrast, edited_features
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.interventions import Compose, Erase, Intervention, Project
from mechunlearn.sites import Site


def mean_difference(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unit ``[d]`` difference of class means E[x|y=1] − E[x|y=0] (zero vector if equal)."""
    v = X[y == 1].mean(0) - X[y == 0].mean(0)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def covariance_directions(X: np.ndarray, y: np.ndarray, k: int = 4,
                          shrinkage: float = 0.1) -> np.ndarray:
    """``[k, d]`` unit directions along which the two classes' covariances differ most.

    Whitens ``X [n, d]`` by the pooled within-class covariance (shrunk towards its mean
    diagonal by ``shrinkage``; near-constant dims dropped), takes the eigenvectors ``u`` of
    W(Σ₁ − Σ₀)W with the largest |eigenvalue|, and maps them back as ``a = W u`` (projecting
    ``a`` out of raw space removes the whitened coordinate ``u·Wx`` exactly).
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}.")
    if min((y == 1).sum(), (y == 0).sum()) < 3:
        raise EmptyDataError("covariance_directions needs at least 3 samples per class.")
    keep = ~near_constant_dims(X)
    Z = X[:, keep]
    c1 = np.cov(Z[y == 1], rowvar=False)
    c0 = np.cov(Z[y == 0], rowvar=False)
    pooled = ((y == 1).sum() * c1 + (y == 0).sum() * c0) / len(y)
    pooled = (1 - shrinkage) * pooled + shrinkage * np.eye(len(pooled)) * np.trace(pooled) / len(pooled)
    evals, evecs = np.linalg.eigh(pooled)
    W = (evecs / np.sqrt(np.maximum(evals, 1e-12 * evals.max()))) @ evecs.T
    m_evals, m_evecs = np.linalg.eigh(W @ (c1 - c0) @ W)
    order = np.argsort(-np.abs(m_evals))[: min(k, len(m_evals))]
    A = (W @ m_evecs[:, order]).T
    out = np.zeros((len(order), X.shape[1]))
    out[:, keep] = A / np.linalg.norm(A, axis=1, keepdims=True)
    return out


def _add(basis: np.ndarray | None, new: np.ndarray, tol: float = 1e-3) -> np.ndarray | None:
    """Orthonormal rows spanning ``basis`` ∪ ``new``; rows already (nearly) in the span are
    skipped (Gram-Schmidt in float64)."""
    rows = [] if basis is None else list(basis)
    for v in np.atleast_2d(new):
        w = v.astype(np.float64).copy()
        for b in rows:
            w -= (w @ b) * b
        if np.linalg.norm(w) > tol * max(np.linalg.norm(v), 1e-300):
            rows.append(w / np.linalg.norm(w))
    return np.stack(rows) if rows else None


@dataclass(frozen=True)
class ErasureFit:
    """Result of :func:`fit_erasure`: the ``edit`` (a ``Compose`` of one ``Project`` per
    Site), the removed ``bases`` ``{Site: [k, d]}`` and the ``history`` (per round × Site:
    validation probe accuracies and directions added)."""

    edit: Intervention
    bases: dict[Site, torch.Tensor]
    history: pd.DataFrame = field(repr=False)


def _compose(parts: dict[Site, Intervention]) -> Intervention | None:
    return Compose(*parts.values()) if parts else None


def fit_sites(model: Any, train: Contrast, sites: Sequence[Site], *,
              finder: Literal["mean_diff", "leace"] = "mean_diff", base: Intervention | None = None,
              batch_size: int = 32) -> Intervention:
    """One direction per Site, fitted in forward order on features edited at earlier Sites.

    Args:
        model: a TransformerBridge.
        train: ``(X+ data, X- data)`` (texts or pairs).
        sites: Sites to edit (e.g. mean-pooled ``resid_post`` of layers L..last); edits act
            at every token position.
        finder: ``"mean_diff"`` (``Project``) or ``"leace"`` (``Erase``, LEACE eraser).
        base: an edit already in place (the new ones are added after it).

    Returns:
        ``Compose`` of ``base`` (if any) and one edit per Site.
    """
    if finder not in ("mean_diff", "leace"):
        raise ConfigError(f"finder must be 'mean_diff' or 'leace', got {finder!r}.")
    x, y = _contrast("train", train)
    parts: list[Intervention] = [] if base is None else [base]
    for s in sites:
        cur = Compose(*parts) if parts else None
        X = edited_features(model, cur, x, [s], batch_size)[s]
        if finder == "mean_diff":
            parts.append(Project(torch.from_numpy(mean_difference(X, y)[None]), site=s))
        else:
            parts.append(Erase(fit_eraser(X, y), site=s))
    return Compose(*parts)


def fit_erasure(
    model: Any,
    train: Contrast,
    sites: Sequence[Site],
    *,
    linear_target: float = 0.55,
    mlp_target: float = 0.60,
    quadratic_k: int = 4,
    max_rounds: int = 8,
    val_frac: float = 0.3,
    seed: int = 0,
    batch_size: int = 32,
) -> ErasureFit:
    """Iterated multi-Site projection until linear and MLP probes fail on validation data.

    Args:
        model: a TransformerBridge.
        train: ``(X+ data, X- data)``. Directions are fitted on all of it; the probes that
            decide where more are needed train on a fitting part and are scored on a
            validation part (``val_frac``, stratified). The test data are never seen.
        sites: Sites to edit *and* check, in forward order (e.g. mean-pooled ``resid_post``
            of every layer from L on).
        linear_target, mlp_target: stop once every Site's validation accuracy is at or below.
        quadratic_k: covariance directions added per round where the MLP probe is above
            target (0: linear erasure only).
        max_rounds: rounds after the first pass (each round: one pass over the Sites).

    Returns:
        :class:`ErasureFit`; ``history`` has columns ``round`` (int, or ``"closure"``),
        ``site``, ``linear_val``, ``mlp_val``, ``added``, ``rank``.
    """
    if not sites:
        raise ConfigError("fit_erasure needs at least one Site.")
    if not 0.05 <= val_frac <= 0.5:
        raise ConfigError(f"val_frac must be in [0.05, 0.5], got {val_frac}.")
    x, y = _contrast("train", train)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        val[rng.choice(idx, max(1, int(round(val_frac * len(idx)))), replace=False)] = True
    bases: dict[Site, np.ndarray | None] = {s: None for s in sites}
    rows: list[dict[str, Any]] = []

    def edit() -> Intervention | None:
        return _compose({s: Project(torch.from_numpy(b), site=s) for s, b in bases.items()
                         if b is not None})

    for rnd in range(max_rounds + 1):
        changed = False
        for s in sites:
            X = edited_features(model, edit(), x, [s], batch_size)[s]
            lin = probe_accuracy(X[~val], y[~val], X[val], y[val], "linear", seed)
            mlp = probe_accuracy(X[~val], y[~val], X[val], y[val], "mlp", seed)
            new: list[np.ndarray] = []
            if rnd == 0 or lin > linear_target:
                new.append(mean_difference(X, y)[None])
            if rnd > 0 and quadratic_k > 0 and mlp > mlp_target:
                new.append(covariance_directions(X, y, quadratic_k))
            before = 0 if bases[s] is None else len(bases[s])
            for v in new:
                if np.linalg.norm(v) > 0:
                    bases[s] = _add(bases[s], v)
            added = (0 if bases[s] is None else len(bases[s])) - before
            changed |= added > 0
            rows.append({"round": rnd, "site": s.key, "linear_val": lin, "mlp_val": mlp,
                         "added": added, "rank": 0 if bases[s] is None else len(bases[s])})
        if not changed and rnd > 0:
            break
    # Closure: later rounds' edits at earlier Sites move the class means at later ones again;
    # one last forward-order pass equalises them (the train data's means, exactly).
    for s in sites:
        X = edited_features(model, edit(), x, [s], batch_size)[s]
        gap = float(np.linalg.norm(X[y == 1].mean(0) - X[y == 0].mean(0)))
        before = 0 if bases[s] is None else len(bases[s])
        if gap > 1e-6 * float(np.linalg.norm(X, axis=1).mean()):
            bases[s] = _add(bases[s], mean_difference(X, y)[None])
        after = 0 if bases[s] is None else len(bases[s])
        rows.append({"round": "closure", "site": s.key, "linear_val": float("nan"),
                     "mlp_val": float("nan"), "added": after - before, "rank": after})
    final = edit()
    if final is None:
        raise ConfigError("fit_erasure found no direction to remove at any Site.")
    return ErasureFit(final, {s: torch.from_numpy(b).float() for s, b in bases.items()
                              if b is not None}, pd.DataFrame(rows))
