"""SEAL metrics computed offline: alignment resistance and feature imprint.

* **Alignment resistance**: share of pairs where the reward model prefers the response humans
  rejected (``r_rejected > r_chosen``); exact ties are counted separately. Per feature, pairs
  are grouped by which response has more of the feature (chosen / rejected / equal), which
  shows e.g. whether the RM resists more often when the rejected response is longer.
* **Feature imprint**: ordinary least squares of the RM score on the responses' feature
  labels (``target="score"``, both responses of every pair) and of the reward difference on
  the label differences within pairs (``target="reward_diff"``), with percentile bootstrap
  confidence intervals over pairs (seeded). With ``standardize=True`` each feature is divided
  by its standard deviation over all responses, so a coefficient is the change in reward per
  one standard deviation of the feature; 0/1 features are left as 0/1 when ``binary_raw``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite
from mechunlearn.seal.data import PreferencePair


def _vec(name: str, x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be a vector [n], got shape {arr.shape}.")
    if arr.size == 0:
        raise EmptyDataError(f"{name} is empty.")
    check_finite(name, arr)
    return arr


def _pair_scores(r_chosen: object, r_rejected: object) -> tuple[np.ndarray, np.ndarray]:
    rc, rr = _vec("r_chosen", r_chosen), _vec("r_rejected", r_rejected)
    if rc.shape != rr.shape:
        raise ShapeError(f"r_chosen {rc.shape} and r_rejected {rr.shape} differ in length.")
    return rc, rr


@dataclass(frozen=True)
class Resistance:
    """Alignment resistance of ``n`` pairs: ``resistance + agreement + ties == 1``."""

    resistance: float
    agreement: float
    ties: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict."""
        return asdict(self)


def alignment_resistance(r_chosen: object, r_rejected: object) -> Resistance:
    """Share of pairs with ``r_rejected > r_chosen`` (and agreement, ties). Inputs ``[n]``."""
    rc, rr = _pair_scores(r_chosen, r_rejected)
    n = rc.size
    return Resistance(float((rr > rc).sum() / n), float((rc > rr).sum() / n),
                      float((rc == rr).sum() / n), int(n))


def _check_labels(name: str, df: pd.DataFrame, n: int) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"{name} must be a pandas DataFrame of labels, got {type(df).__name__}.")
    if len(df) != n:
        raise ShapeError(f"{name} has {len(df)} rows, expected {n} (one per pair).")
    out = df.astype(np.float64).reset_index(drop=True)
    check_finite(name, out.to_numpy())
    return out


def resistance_by_feature(r_chosen: object, r_rejected: object, labels_chosen: pd.DataFrame,
                          labels_rejected: pd.DataFrame, kinds: Mapping[str, str] | None = None,
                          ) -> pd.DataFrame:
    """Resistance per feature and group.

    Groups: ``"chosen_more"`` (chosen has more of the feature), ``"rejected_more"``,
    ``"equal"``. Returns columns ``feature, kind, group, n, resistance, agreement``.
    """
    rc, rr = _pair_scores(r_chosen, r_rejected)
    lc = _check_labels("labels_chosen", labels_chosen, rc.size)
    lr = _check_labels("labels_rejected", labels_rejected, rc.size)
    if list(lc.columns) != list(lr.columns):
        raise ConfigError(f"labels_chosen columns {list(lc.columns)} != labels_rejected "
                          f"columns {list(lr.columns)}.")
    rows = []
    for feat in lc.columns:
        diff = lc[feat].to_numpy() - lr[feat].to_numpy()
        for group, mask in (("chosen_more", diff > 0), ("rejected_more", diff < 0),
                            ("equal", diff == 0)):
            n = int(mask.sum())
            rows.append({"feature": feat, "kind": (kinds or {}).get(feat, "other"),
                         "group": group, "n": n,
                         "resistance": float((rr[mask] > rc[mask]).mean()) if n else np.nan,
                         "agreement": float((rc[mask] > rr[mask]).mean()) if n else np.nan})
    return pd.DataFrame(rows)


def most_resistant(pairs: Sequence[PreferencePair], r_chosen: object, r_rejected: object,
                   k: int = 10, context_chars: int = 300) -> pd.DataFrame:
    """The ``k`` pairs where the RM prefers the rejected response by the largest margin.

    Columns: ``id, margin (r_rejected - r_chosen), r_chosen, r_rejected, prompt_tail,
    chosen, rejected``.
    """
    rc, rr = _pair_scores(r_chosen, r_rejected)
    if len(pairs) != rc.size:
        raise ShapeError(f"{len(pairs)} pairs but {rc.size} scores.")
    margin = rr - rc
    order = np.argsort(-margin, kind="stable")[: max(0, int(k))]
    return pd.DataFrame([{
        "id": pairs[i].id, "margin": float(margin[i]), "r_chosen": float(rc[i]),
        "r_rejected": float(rr[i]), "prompt_tail": pairs[i].prompt[-context_chars:],
        "chosen": pairs[i].chosen, "rejected": pairs[i].rejected} for i in order
        if margin[i] > 0])


def _design(x: np.ndarray, cols: list[str], scale: np.ndarray) -> tuple[np.ndarray, list[str]]:
    ok = scale > 0
    xs = x[:, ok] / scale[ok]
    return np.column_stack([np.ones(len(x)), xs]), [c for c, o in zip(cols, ok) if o]


def _ols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x, y, rcond=None)[0]


def feature_imprint(r_chosen: object, r_rejected: object, labels_chosen: pd.DataFrame,
                    labels_rejected: pd.DataFrame, kinds: Mapping[str, str] | None = None,
                    n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                    standardize: bool = True, binary_raw: bool = True) -> pd.DataFrame:
    """Regress RM scores on feature labels, with bootstrap CIs over pairs.

    Args:
        r_chosen, r_rejected: RM scores ``[n]``.
        labels_chosen, labels_rejected: ``[n, k]`` labels of the two responses.
        kinds: ``{feature: "target"|"spoiler"|...}`` for the table.
        n_boot: bootstrap resamples of the pairs (0: no CIs).
        standardize: divide each feature by its std over all ``2n`` responses.
        binary_raw: keep 0/1 features unscaled even when ``standardize``.

    Returns:
        Columns ``target ("score"|"reward_diff"), feature, kind, coef, ci_low, ci_high,
        se_boot, p_boot, n``; the intercept is the row ``feature="(intercept)"``. Features
        constant over the responses get no row.
    """
    rc, rr = _pair_scores(r_chosen, r_rejected)
    n = rc.size
    lc = _check_labels("labels_chosen", labels_chosen, n)
    lr = _check_labels("labels_rejected", labels_rejected, n)
    if list(lc.columns) != list(lr.columns):
        raise ConfigError("labels_chosen and labels_rejected must have the same columns.")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci}.")
    cols = [str(c) for c in lc.columns]
    xc, xr = lc.to_numpy(), lr.to_numpy()
    both = np.vstack([xc, xr])
    scale = both.std(0)
    if standardize:
        binary = np.all((both == 0) | (both == 1), axis=0)
        scale = np.where(binary & binary_raw & (scale > 0), 1.0, scale)
    else:
        scale = np.where(scale > 0, 1.0, 0.0)
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
               for _ in range(int(n_boot))]
    rows = []
    for target in ("score", "reward_diff"):
        if target == "score":
            x, names = _design(np.vstack([xc, xr]), cols, scale)
            y = np.concatenate([rc, rr])
        else:
            x, names = _design(xc - xr, cols, scale)
            y = rc - rr

        def fit(w: np.ndarray | None, x: np.ndarray = x, y: np.ndarray = y,
                target: str = target) -> np.ndarray:
            if w is None:
                return _ols(x, y)
            ww = np.concatenate([w, w]) if target == "score" else w  # resample whole pairs
            xtw = x.T * ww
            return np.linalg.lstsq(xtw @ x, xtw @ y, rcond=None)[0]

        coef = fit(None)
        draws = np.array([fit(w) for w in weights]) if weights else np.empty((0, coef.size))
        lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
        for j, name in enumerate(["(intercept)"] + names):
            d = draws[:, j] if len(draws) else np.array([])
            rows.append({
                "target": target, "feature": name,
                "kind": "intercept" if j == 0 else (kinds or {}).get(name, "other"),
                "coef": float(coef[j]),
                "ci_low": float(np.quantile(d, lo_q)) if d.size else np.nan,
                "ci_high": float(np.quantile(d, hi_q)) if d.size else np.nan,
                "se_boot": float(d.std(ddof=1)) if d.size > 1 else np.nan,
                "p_boot": float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
                if d.size else np.nan,
                "n": n if target == "reward_diff" else 2 * n})
    return pd.DataFrame(rows)
