"""Held-out probe accuracy: can a linear or a small MLP classifier still read the concept?

After an erasure edit, "a linear probe at the edited Site is at chance" says little: a small
MLP probe, or a linear probe a few layers later, may read the concept again (measured on
all-MiniLM-L6-v2: MLP probe 0.75-0.78 and last-layer linear probe 0.86-0.91 after a one-Site
edit). These probes are what :func:`mechunlearn.erasure.erasure_report` reports per layer.

Both probes are trained on *train* features and scored on *held-out* features (balanced
accuracy, so chance is 0.5 whatever the class sizes). Features are standardised on the train
split after dropping near-constant dimensions (MiniLM's final LayerNorm has scales ~1e-33;
standardising those would inflate noise by ~1e9).

* linear: L2 logistic regression (scikit-learn ``LogisticRegression``, C = 1).
* mlp: one hidden layer of 128 ReLU units (scikit-learn ``MLPClassifier``, Adam, L2 1e-3,
  early stopping on 10 % of the train split). Settings are fixed in advance, never chosen on
  the held-out data.

Sources: INLP, Ravfogel et al., "Null It Out: Guarding Protected Attributes by Iterative
Nullspace Projection" (arXiv:2004.07667); LEACE, Belrose et al., "LEACE: Perfect linear
concept erasure in closed form" (arXiv:2306.03819), which also discusses non-linear leakage.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np

from mechunlearn.directions.base import as_matrix, near_constant_dims
from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError

ProbeKind = Literal["linear", "mlp"]
PROBES: tuple[str, ...] = ("linear", "mlp")


def _labels(name: str, y: Any, n: int) -> np.ndarray:
    arr = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y).reshape(-1)
    if arr.shape[0] != n:
        raise ShapeError(f"{name} has {arr.shape[0]} labels for {n} feature rows.")
    vals = set(np.unique(arr).tolist())
    if not vals <= {0, 1}:
        raise ConfigError(f"{name} must be binary 0/1 labels, got values {sorted(vals)[:5]}.")
    if len(vals) < 2:
        raise EmptyDataError(f"{name} has only one class; a probe needs both classes.")
    return arr.astype(int)


def _model(kind: str, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind == "linear":
        return LogisticRegression(C=1.0, max_iter=2000)
    if kind == "mlp":
        return MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=500,
                             early_stopping=True, validation_fraction=0.1,
                             n_iter_no_change=20, random_state=seed)
    raise ConfigError(f"Unknown probe kind {kind!r}; use one of {PROBES}.")


def probe_accuracy(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any,
    kind: ProbeKind = "linear", seed: int = 0,
) -> float:
    """Balanced accuracy on held-out data of a probe trained on the train split.

    Args:
        x_train: ``[n, d]`` features (tensor, array or ``Features``); ``y_train`` ``[n]`` 0/1.
        x_test: ``[m, d]`` held-out features; ``y_test`` ``[m]`` 0/1.
        kind: ``"linear"`` (logistic regression) or ``"mlp"`` (1 hidden layer, 128 units).
        seed: the MLP's initialisation / early-stopping split.

    Returns:
        Balanced accuracy in [0, 1] (chance 0.5).

    Raises:
        ShapeError: feature dimensions or label counts disagree.
        EmptyDataError: a split with a single class.
        ConfigError: unknown ``kind`` or non-binary labels.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    Xa = as_matrix("x_train", x_train)
    Xb = as_matrix("x_test", x_test)
    if Xa.shape[1] != Xb.shape[1]:
        raise ShapeError(f"x_train has d={Xa.shape[1]} but x_test has d={Xb.shape[1]}.")
    ya = _labels("y_train", y_train, Xa.shape[0])
    yb = _labels("y_test", y_test, Xb.shape[0])
    keep = ~near_constant_dims(Xa)
    if not keep.any():
        return 0.5  # every dimension is constant: nothing to read
    scaler = StandardScaler().fit(Xa[:, keep])
    clf = _model(kind, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the score is what counts
        clf.fit(scaler.transform(Xa[:, keep]), ya)
    pred = clf.predict(scaler.transform(Xb[:, keep]))
    return float(balanced_accuracy_score(yb, pred))


def accuracy_p_value(acc: float, n: int) -> float:
    """One-sided p-value of a held-out accuracy ``acc`` on ``n`` samples against chance 0.5.

    Normal approximation to the binomial with continuity correction:
    p = P(Binomial(n, 0.5) >= acc·n). Used to say whether an *unedited* model shows any
    evidence of the concept at all (a null contrast should not).
    """
    if n < 1:
        raise EmptyDataError("accuracy_p_value needs n >= 1 held-out samples.")
    k = acc * n
    z = (k - 0.5 - n / 2) / math.sqrt(n / 4)
    return float(0.5 * math.erfc(z / math.sqrt(2)))
