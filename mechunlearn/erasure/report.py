"""The erasure report: after an edit, where does the concept come back?

``erasure_report(model, {"name": edit, ...}, train=(pos, neg), test=(pos, neg), neutral=...)``
extracts features at every Site (default: mean-pooled ``hook_resid_post`` of every layer)
*with each edit switched on*, trains a linear and a small-MLP probe on the edited train
features and scores them on the edited held-out features, and puts the edit's cost on neutral
text beside them (:mod:`mechunlearn.erasure.cost`). One row per edit × Site; the unedited
model is always the first edit (``"none"``).

An edit at one hook point is often recomputed downstream: on all-MiniLM-L6-v2, projecting a
harmful-vs-harmless direction out of layer 1 left a linear probe at chance *there*, but an MLP
probe read 0.75-0.78 and a linear probe at the last layer 0.86-0.91. The report shows that in
one table and one plot (:func:`plot_erasure`).

**Evidence first.** If no probe on the *unedited* model beats chance at any Site (one-sided
binomial test, Bonferroni over Sites), there is no concept to erase and the report emits a
``NoEvidenceWarning``; ``df.attrs["evidence"]`` says which. A random-label contrast must land
there.

Sources: Belrose et al., "LEACE: Perfect linear concept erasure in closed form"
(arXiv:2306.03819); Ravfogel et al., "Null It Out" (INLP, arXiv:2004.07667).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mechunlearn.directions.base import NoEvidenceWarning
from mechunlearn.erasure.context import Edit, edit_context, n_directions
from mechunlearn.erasure.cost import final_site, neutral_cost
from mechunlearn.erasure.probes import PROBES, accuracy_p_value, probe_accuracy
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.features import extract
from mechunlearn.sites import Site, resid
from mechunlearn.sweep import site_columns

Contrast = tuple[Sequence[Any], Sequence[Any]]  # (X+ data, X- data): texts or (prompt, response)


def default_sites(model: Any, position: Any = "mean") -> list[Site]:
    """``blocks.L.hook_resid_post`` for every layer L, reduced by ``position``."""
    return [resid(layer, "post", position) for layer in range(int(model.cfg.n_layers))]


def _contrast(name: str, c: Any) -> tuple[list[Any], np.ndarray]:
    if not isinstance(c, (tuple, list)) or len(c) != 2:
        raise ConfigError(f"{name} must be a pair (X+ data, X- data) of text lists.")
    pos, neg = list(c[0]), list(c[1])
    if len(pos) < 2 or len(neg) < 2:
        raise EmptyDataError(
            f"{name} needs at least 2 samples per class, got {len(pos)} X+ and {len(neg)} X-."
        )
    return pos + neg, np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]


def edited_features(model: Any, edit: Edit, data: Sequence[Any], sites: Sequence[Site],
                    batch_size: int = 32) -> dict[Site, np.ndarray]:
    """Features ``{Site: [n, d] float64}`` of ``data`` with ``edit`` switched on (one pass)."""
    with edit_context(model, edit):
        feats = extract(model, list(data), list(sites), batch_size=batch_size, progress=False)
    return {s: f.values.double().numpy() for s, f in feats.items()}


def erasure_report(
    model: Any,
    edits: Mapping[str, Edit],
    train: Contrast,
    test: Contrast,
    *,
    sites: Sequence[Site] | None = None,
    neutral: Sequence[str] | None = None,
    probes: Sequence[str] = PROBES,
    alpha: float = 0.05,
    seed: int = 0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Probe accuracy per edit × Site on held-out data, with each edit's cost.

    Args:
        model: a TransformerBridge.
        edits: ``{name: edit}``; an edit is an Intervention (``Project``, ``Erase``,
            ``Compose`` over several Sites), an ``erasure.WeightEdit`` or a callable ``model
            -> context manager``. ``"none"`` (unedited) is added first.
        train: ``(X+ data, X- data)`` the probes are trained on (texts or pairs).
        test: ``(X+ data, X- data)`` held out; accuracies are measured here.
        sites: where to probe (default: :func:`default_sites`, mean-pooled resid_post).
        neutral: neutral texts for the cost columns (``None``: cost columns are NaN).
        probes: subset of ``("linear", "mlp")``.
        alpha: significance level of the unedited model's evidence check.
        seed: MLP probe seed.

    Returns:
        DataFrame, one row per edit × Site: ``edit``, Site columns (``site``, ``layer``, ...),
        ``linear_acc`` / ``mlp_acc`` (balanced held-out accuracy, chance 0.5),
        ``linear_p`` / ``mlp_p`` (one-sided p vs chance), ``n_directions``, ``kl``,
        ``emb_dist``, ``sim_spearman``, ``n_train``, ``n_test``. ``df.attrs["evidence"]``:
        whether the unedited model shows the concept anywhere.

    Warns:
        NoEvidenceWarning: no probe beats chance on the unedited model at any Site.
    """
    bad = [p for p in probes if p not in PROBES]
    if bad or not probes:
        raise ConfigError(f"probes must be a non-empty subset of {PROBES}, got {list(probes)}.")
    if not isinstance(edits, Mapping):
        raise ConfigError("edits must be a mapping {name: edit}.")
    site_list = list(sites) if sites is not None else default_sites(model)
    if not site_list:
        raise ConfigError("erasure_report needs at least one Site.")
    x_tr, y_tr = _contrast("train", train)
    x_te, y_te = _contrast("test", test)
    all_edits: dict[str, Edit] = {"none": None, **{str(k): v for k, v in edits.items() if k != "none"}}
    ref = None
    if neutral is not None:
        ref = edited_features(model, None, neutral, [final_site(model)], batch_size)
        ref = next(iter(ref.values()))
    rows: list[dict[str, Any]] = []
    for name, edit in all_edits.items():
        f_tr = edited_features(model, edit, x_tr, site_list, batch_size)
        f_te = edited_features(model, edit, x_te, site_list, batch_size)
        nan = float("nan")
        cost = {"kl": nan, "emb_dist": nan, "sim_spearman": nan}
        if neutral is not None:
            cost = neutral_cost(model, edit, neutral, reference=ref, batch_size=batch_size)
        for s in site_list:
            row: dict[str, Any] = {"edit": name, **site_columns(s)}
            for p in probes:
                acc = probe_accuracy(f_tr[s], y_tr, f_te[s], y_te, kind=p, seed=seed)
                row[f"{p}_acc"] = acc
                row[f"{p}_p"] = accuracy_p_value(acc, len(y_te))
            row.update(n_directions=n_directions(edit), **cost, n_train=len(y_tr),
                       n_test=len(y_te))
            rows.append(row)
    df = pd.DataFrame(rows)
    base = df[df.edit == "none"]
    p_min = min(float(base[f"{p}_p"].min()) for p in probes)
    df.attrs["evidence"] = bool(p_min * len(site_list) * len(probes) <= alpha)
    if not df.attrs["evidence"]:
        warnings.warn(
            f"No evidence of the concept in the unedited model: no probe beat chance at any of "
            f"{len(site_list)} Sites (best Bonferroni p = {min(1.0, p_min * len(site_list) * len(probes)):.2f}). "
            "Erasure numbers on this contrast mean nothing; check the labels.",
            NoEvidenceWarning, stacklevel=2,
        )
    return df


def plot_erasure(df: pd.DataFrame, *, title: str | None = None,
                 save: str | os.PathLike[str] | None = None) -> Any:
    """Probe accuracy against layer, one line per edit (labelled with its cost), chance at 0.5.

    ``df`` is :func:`erasure_report`'s output. Returns a matplotlib ``Figure``.
    """
    from mechunlearn.plots import plot_layers

    metrics = [c for c in ("linear_acc", "mlp_acc") if c in df.columns]
    if not metrics or "edit" not in df.columns:
        raise ConfigError("plot_erasure needs erasure_report output (edit, linear_acc/mlp_acc).")
    d = df.copy()

    def label(g: pd.DataFrame) -> str:
        kl, emb = float(g["kl"].iloc[0]), float(g["emb_dist"].iloc[0])
        cost = f"KL {kl:.3f}" if np.isfinite(kl) else (f"1-cos {emb:.3f}" if np.isfinite(emb) else "")
        return f"{g.name} ({cost})" if cost else str(g.name)

    labels = d.groupby("edit", sort=False).apply(label, include_groups=False)
    d["edit (cost)"] = d["edit"].map(labels)
    return plot_layers(d, metrics, hue="edit (cost)", chance=0.5, title=title, save=save)
