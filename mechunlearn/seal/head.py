"""The Bradley-Terry loss and a standardised linear reward head fitted on frozen features.

``score(x) = ((x - mean) / scale)[keep] @ w + b``. Near-constant feature dimensions (e.g.
all-MiniLM-L6-v2's final LayerNorm has scale ~1e-33 on dims 127, 223, 319) are detected on the
training features and dropped (``keep=False``) *before* standardising; dividing by their tiny
spread would blow them up by ~1e9 and let noise dominate the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError, check_finite


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, reduction: str = "mean") -> Tensor:
    """Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` (computed as a softplus).

    Args:
        r_chosen, r_rejected: scores ``[n]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair ``[n]``).
    """
    if r_chosen.shape != r_rejected.shape:
        raise ShapeError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected "
                         f"{tuple(r_rejected.shape)} must have the same shape.")
    loss = F.softplus(-(r_chosen - r_rejected))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _as_2d(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor [n, d], got {type(x).__name__}.")
    if x.ndim != 2:
        raise ShapeError(f"{name} must be [n, d], got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise EmptyDataError(f"{name} has no rows.")
    check_finite(name, x)
    return x.to(torch.float64)


@dataclass(frozen=True)
class LinearHead:
    """A fitted scalar reward head on standardised features.

    Attributes:
        w: ``[d]`` weights on standardised features (0 on dropped dims).
        b: scalar bias (chosen so the training scores have mean 0; BT ignores it).
        mean, scale: ``[d]`` standardisation statistics from the training features.
        keep: ``[d]`` bool, False for near-constant dimensions that were dropped.
    """

    w: Tensor
    b: Tensor
    mean: Tensor
    scale: Tensor
    keep: Tensor

    @property
    def d(self) -> int:
        """Input feature dimension."""
        return int(self.w.shape[0])

    def standardize(self, x: Tensor) -> Tensor:
        """``[n, d] -> [n, d]`` standardised features, dropped dims set to 0 (float64)."""
        x = x.to(torch.float64)
        if x.shape[-1] != self.d:
            raise ShapeError(f"Reward head expects features with d={self.d}, got shape "
                             f"{tuple(x.shape)}.")
        return torch.where(self.keep, (x - self.mean) / self.scale, torch.zeros_like(x))

    def __call__(self, x: Tensor) -> Tensor:
        """Scores ``[n]`` (float64) of features ``[n, d]``."""
        return self.standardize(x) @ self.w + self.b

    def torch_score(self, x: Tensor) -> Tensor:
        """Differentiable scores ``[n]`` in ``x``'s dtype (for fine-tuning)."""
        mean, scale = self.mean.to(x.dtype), self.scale.to(x.dtype)
        z = torch.where(self.keep, (x - mean) / scale, torch.zeros_like(x))
        return z @ self.w.to(x.dtype) + self.b.to(x.dtype)

    def tensors(self) -> dict[str, Tensor]:
        """Named tensors for safetensors."""
        return {"w": self.w, "b": self.b.reshape(1), "mean": self.mean, "scale": self.scale,
                "keep": self.keep.to(torch.uint8)}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> LinearHead:
        """Inverse of :meth:`tensors`."""
        try:
            return cls(t["w"].double(), t["b"].double().reshape(()), t["mean"].double(),
                       t["scale"].double(), t["keep"].bool())
        except KeyError as e:
            raise ConfigError(f"Reward head file lacks tensor {e}.") from e


def near_constant_dims(x: Tensor, rel_tol: float = 1e-4) -> Tensor:
    """``[d]`` bool: dims whose std is below ``rel_tol`` x the 75th-percentile std (or 0).

    The 75th percentile stays a sound reference while fewer than a quarter of dims are dead.
    """
    std = x.to(torch.float64).std(0, unbiased=False)
    ref = torch.quantile(std, 0.75)
    return (std <= rel_tol * ref) | (std == 0)


def standardizer(x: Tensor, rel_tol: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, scale, keep)`` of features ``x [n, d]``; near-constant dims have keep=False."""
    x = _as_2d("features", x)
    keep = ~near_constant_dims(x, rel_tol)
    if not bool(keep.any()):
        raise ShapeError(f"All {x.shape[1]} feature dims are constant on the training data.")
    mean = x.mean(0)
    scale = torch.where(keep, x.std(0, unbiased=False), torch.ones_like(mean))
    return mean, scale, keep


def fit_bt_weights(z_c: Tensor, z_r: Tensor, l2: float, max_iter: int = 50,
                   tol: float = 1e-9, w0: Tensor | None = None) -> Tensor:
    """Weights ``[d]`` minimising mean BT loss of ``z_c @ w - z_r @ w`` + ``l2/2 |w|^2``.

    Convex; solved by damped Newton steps (backtracking line search) in float64 from
    ``w0`` (default 0), so it is deterministic; it stops when the Newton decrement is below
    ``tol``. Warm starts (``w0`` from a nearby ``l2``) make a regularisation path cheap.
    """
    x = (z_c - z_r).to(torch.float64)
    n, d = x.shape
    w = torch.zeros(d, dtype=torch.float64) if w0 is None else w0.clone().to(torch.float64)
    eye = torch.eye(d, dtype=torch.float64)

    def objective(v: Tensor) -> Tensor:
        return F.softplus(-(x @ v)).mean() + 0.5 * l2 * (v @ v)

    f = objective(w)
    for _ in range(max_iter):
        m = x @ w
        p = torch.sigmoid(-m)  # d loss / d m = -p
        grad = -(x.T @ p) / n + l2 * w
        h = (x.T * (p * (1 - p))) @ x / n + (l2 + 1e-12) * eye
        step = torch.linalg.solve(h, grad)
        if float(grad @ step) / 2 < tol:
            break
        t = 1.0
        while True:
            cand = w - t * step
            fc = objective(cand)
            if fc <= f - 1e-4 * t * (grad @ step) or t < 1e-8:
                break
            t *= 0.5
        w, f = cand, fc
    return w


def fit_head(x_chosen: Tensor, x_rejected: Tensor, l2: float | str = "auto", seed: int = 0,
             folds: int = 5, grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0),
             rel_tol: float = 1e-4) -> tuple[LinearHead, dict[str, float]]:
    """Fit a linear BT reward head on frozen features of chosen/rejected responses.

    Args:
        x_chosen, x_rejected: ``[n, d]`` features of the two responses of each pair.
        l2: ridge strength on standardised weights, or ``"auto"``: pick from ``grid`` by
            ``folds``-fold cross-validated pair accuracy (folds drawn with ``seed``).
        rel_tol: near-constant-dimension threshold (see :func:`near_constant_dims`).

    Returns:
        ``(head, info)`` with ``info = {"l2", "cv_accuracy" (auto only), "train_accuracy"}``.
    """
    xc, xr = _as_2d("x_chosen", x_chosen), _as_2d("x_rejected", x_rejected)
    if xc.shape != xr.shape:
        raise ShapeError(f"x_chosen {tuple(xc.shape)} and x_rejected {tuple(xr.shape)} differ.")
    mean, scale, keep = standardizer(torch.cat([xc, xr]), rel_tol)

    def z(x: Tensor) -> Tensor:
        return torch.where(keep, (x - mean) / scale, torch.zeros_like(x))

    zc, zr = z(xc), z(xr)
    info: dict[str, float] = {}
    if isinstance(l2, str):
        if l2 != "auto":
            raise ConfigError(f"l2 must be a float or 'auto', got {l2!r}.")
        n = zc.shape[0]
        if n < 2 * folds:
            raise EmptyDataError(f"l2='auto' needs at least {2 * folds} pairs, got {n}.")
        g = torch.Generator().manual_seed(seed)
        fold = torch.randperm(n, generator=g) % folds
        correct = [0] * len(grid)
        path = sorted(range(len(grid)), key=lambda i: -grid[i])  # strong to weak, warm starts
        for k in range(folds):
            tr, te = fold != k, fold == k
            w = None
            for i in path:
                w = fit_bt_weights(zc[tr], zr[tr], grid[i], w0=w)
                correct[i] += int(((zc[te] - zr[te]) @ w > 0).sum())
        accs = [c / n for c in correct]
        best = max(range(len(grid)), key=lambda i: (accs[i], grid[i]))
        l2 = grid[best]
        info["cv_accuracy"] = accs[best]
    if not l2 >= 0:
        raise ConfigError(f"l2 must be >= 0, got {l2}.")
    w = fit_bt_weights(zc, zr, float(l2))
    b = -torch.cat([zc, zr]).mean(0) @ w
    info["l2"] = float(l2)
    info["train_accuracy"] = float(((zc - zr) @ w > 0).double().mean())
    return LinearHead(w, b, mean, scale, keep), info


def random_head(x: Tensor, seed: int = 0, rel_tol: float = 1e-4) -> LinearHead:
    """An untrained head: standardiser from ``x [n, d]``, weights ``N(0, 1/d)`` from ``seed``.

    The "before training" baseline for alignment resistance.
    """
    mean, scale, keep = standardizer(x, rel_tol)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], generator=g, dtype=torch.float64) / x.shape[1] ** 0.5
    w = torch.where(keep, w, torch.zeros_like(w))
    return LinearHead(w, torch.zeros((), dtype=torch.float64), mean, scale, keep)
