"""``Directions``: an orthonormal basis of directions at a Site, with scores and evidence.

Also ``orthonormalize`` (float64 QR with typed errors) and the ``NoEvidenceWarning`` logic;
input handling lives in :mod:`mechunlearn.directions.inputs`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechunlearn.directions.inputs import (  # noqa: F401  (re-exported)
    _is_store,
    as_matrix,
    fingerprint_of,
    groups_array,
    labelled,
    near_constant_dims,
    site_of,
)
from mechunlearn.errors import (  # noqa: F401 (defined in errors.py, kept importable here)
    ConfigError,
    NoEvidenceWarning,
    RankDeficientError,
    ShapeError,
    StoreError,
)
from mechunlearn.features import Features
from mechunlearn.sites import Site

FORMAT_VERSION = 1




def orthonormalize(vectors: Any, d: int | None = None, rank_tol: float = 1e-6) -> Tensor:
    """Orthonormal basis ``[k, d]`` (float32) spanning the rows of ``vectors`` ``[k, d]``.

    Computed in float64 with QR; the first row keeps its direction and sign. Raises
    :class:`ShapeError` for a wrong shape / dimension, zero rows, and
    :class:`RankDeficientError` when the rows are (nearly) linearly dependent.
    """
    V = as_matrix("directions", vectors[None] if _ndim(vectors) == 1 else vectors)
    if d is not None and V.shape[1] != d:
        raise ShapeError(f"directions have dimension {V.shape[1]}, expected d={d}.")
    norms = np.linalg.norm(V, axis=1)
    if (norms == 0).any():
        raise ShapeError(f"directions rows {np.nonzero(norms == 0)[0].tolist()} are zero vectors.")
    if V.shape[0] > V.shape[1]:
        raise RankDeficientError(f"{V.shape[0]} directions in d={V.shape[1]} cannot be independent.")
    Vn = V / norms[:, None]
    Q, R = np.linalg.qr(Vn.T)
    diag = np.abs(np.diag(R))
    if diag.min() < rank_tol:
        raise RankDeficientError(
            f"directions [k={V.shape[0]}, d={V.shape[1]}] are linearly dependent (smallest "
            f"QR pivot {diag.min():.2e} < {rank_tol}); drop redundant rows."
        )
    Q = Q * np.sign(np.diag(R))[None, :]
    return torch.from_numpy(Q.T.copy()).to(torch.float32)


def _ndim(x: Any) -> int:
    if isinstance(x, Features):
        return x.values.ndim
    return x.ndim if hasattr(x, "ndim") else np.asarray(x).ndim


@dataclass(frozen=True)
class Directions:
    """Directions found at a Site.

    Attributes:
        basis: ``[k, d]`` float32, orthonormal rows, best first; row 0 is oriented so that
            X+ has the larger mean coordinate.
        scores: per-direction lists (length ``k``, e.g. ``"ratio"``, ``"mean_diff"``,
            ``"train_auc"``) and evidence floats for the top direction (``"heldout_auc"``,
            ``"p_value"``, ``"null_auc_mean"``, ``"null_auc_q05"``, ``"null_auc_q95"``).
        site: where the features came from (``None`` if unknown).
        method: finder name (``"pca_bias"``, ``"mean_diff"``, ``"probe"``, ``"ccs"``, ``"leace"``).
        settings: the finder's settings (JSON-serialisable).
        eraser: a ``concept_erasure.LeaceEraser`` for ``method="leace"``, else ``None``.
        fingerprint: weights fingerprint of the model the features came from (``None`` if
            unknown or mixed); interventions built from these Directions warn when applied to
            another model (see :mod:`mechunlearn.provenance`).
    """

    basis: Tensor
    scores: dict[str, Any] = field(default_factory=dict)
    site: Site | None = None
    method: str = "custom"
    settings: dict[str, Any] = field(default_factory=dict)
    eraser: Any = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "basis", orthonormalize(self.basis))
        if self.site is not None and not isinstance(self.site, Site):
            raise ConfigError(f"Directions.site must be a Site, got {type(self.site).__name__}.")

    @property
    def k(self) -> int:
        """Number of directions."""
        return int(self.basis.shape[0])

    @property
    def d(self) -> int:
        """Feature dimension."""
        return int(self.basis.shape[1])

    @property
    def direction(self) -> Tensor:
        """The top direction ``[d]``."""
        return self.basis[0]

    @property
    def p_value(self) -> float | None:
        """Permutation p-value of the top direction's held-out AUC (``None`` if not tested)."""
        p = self.scores.get("p_value")
        return None if p is None else float(p)

    @property
    def significant(self) -> bool | None:
        """Whether the held-out AUC beat the permutation null at ``settings['alpha']``.

        ``None`` when no test was run, or when too few permutations were run for any
        p-value to reach ``alpha`` (the smallest possible is ``1 / (1 + n_permutations)``).
        """
        p, alpha = self.p_value, float(self.settings.get("alpha", 0.05))
        n = self.scores.get("n_permutations")
        if p is None or np.isnan(p) or (n is not None and 1 / (1 + n) > alpha):
            return None
        return p <= alpha

    def top(self, k: int) -> Directions:
        """The first ``k`` directions (per-direction scores truncated; evidence kept)."""
        if not 1 <= k <= self.k:
            raise ConfigError(f"top(k) needs 1 <= k <= {self.k}, got {k}.")
        sc = {n: (v[:k] if isinstance(v, list) else v) for n, v in self.scores.items()}
        return Directions(self.basis[:k], sc, self.site, self.method, dict(self.settings),
                          fingerprint=self.fingerprint)

    def coords(self, x: Tensor) -> Tensor:
        """Coordinates ``[..., k]`` of ``x [..., d]`` along the basis (dtype of ``x``)."""
        if x.shape[-1] != self.d:
            raise ShapeError(f"x has last dimension {x.shape[-1]}, directions have d={self.d}.")
        return x @ self.basis.to(x.device, x.dtype).T

    # --------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (basis as nested lists; eraser tensors likewise)."""
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "basis": self.basis.tolist(),
            "scores": _jsonable(self.scores),
            "site": None if self.site is None else self.site.to_dict(),
            "method": self.method,
            "settings": _jsonable(self.settings),
            "fingerprint": self.fingerprint,
        }
        if self.eraser is not None:
            out["eraser"] = {k: (None if v is None else v.tolist()) for k, v in _eraser_parts(self.eraser).items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Directions:
        """Inverse of :meth:`to_dict`."""
        try:
            site = None if d.get("site") is None else Site.from_dict(d["site"])
            er = d.get("eraser")
            eraser = None if er is None else _make_eraser(
                {k: (None if v is None else torch.tensor(v)) for k, v in er.items()}
            )
            return cls(torch.tensor(d["basis"]), _nan(dict(d.get("scores", {}))), site,
                       d.get("method", "custom"), dict(d.get("settings", {})), eraser,
                       d.get("fingerprint"))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"Not a Directions dict ({e}).") from e

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write folder ``path`` with ``directions.safetensors`` + ``directions.json``.

        Written by :func:`mechunlearn.outputs.output_folder` (atomic; ``.mechunlearn.json``
        records the package versions): saved Directions at ``path`` are replaced, a folder
        holding other files is refused with :class:`~mechunlearn.errors.OutputExistsError`
        (``overwrite=True`` also replaces another kind of mechunlearn output).
        """
        from safetensors.torch import save_file

        from mechunlearn.outputs import output_folder

        tensors = {"basis": self.basis.contiguous()}
        if self.eraser is not None:
            for k, v in _eraser_parts(self.eraser).items():
                if v is not None:
                    tensors[f"eraser.{k}"] = v.contiguous()
        meta = self.to_dict()
        meta.pop("basis")
        meta.pop("eraser", None)
        meta["has_eraser"] = self.eraser is not None
        with output_folder(path, "directions", overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / "directions.safetensors"))
            (tmp / "directions.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Directions:
        """Read what :meth:`save` wrote (:class:`StoreError` if it is missing or corrupt)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        p = Path(path)
        if not p.is_dir():
            raise StoreError(f"Cannot read Directions from {p}: not a folder. Pass the folder "
                             "written by `mechunlearn directions --out` or Directions.save.")
        try:
            meta = json.loads((p / "directions.json").read_text())
            tensors = load_file(str(p / "directions.safetensors"))
            if not isinstance(meta, dict) or "basis" not in tensors:
                raise ValueError("no 'basis' tensor or metadata")
        except (OSError, ValueError, SafetensorError) as e:
            raise StoreError(f"Cannot read Directions from {p}: {e}. The files are missing or "
                             "corrupt (e.g. truncated): save the directions again.") from e
        eraser = None
        if meta.get("has_eraser"):
            eraser = _make_eraser({k: tensors.get(f"eraser.{k}") for k in ("proj_left", "proj_right", "bias")})
        site = None if meta.get("site") is None else Site.from_dict(meta["site"])
        return cls(tensors["basis"], _nan(meta.get("scores", {})), site, meta.get("method", "custom"),
                   meta.get("settings", {}), eraser, meta.get("fingerprint"))


def _eraser_parts(eraser: Any) -> dict[str, Tensor | None]:
    return {"proj_left": eraser.proj_left, "proj_right": eraser.proj_right, "bias": eraser.bias}


def _make_eraser(parts: dict[str, Tensor | None]) -> Any:
    from concept_erasure import LeaceEraser

    return LeaceEraser(parts["proj_left"], parts["proj_right"], parts.get("bias"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, Tensor)):
        return _jsonable(np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x).tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf: null (read back as NaN by _nan)
    if isinstance(x, Site):
        return x.to_dict()
    return x


def _nan(x: Any) -> Any:
    """Scores read from JSON: ``null`` (a NaN/inf score when saved) -> NaN."""
    if isinstance(x, dict):
        return {k: _nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan(v) for v in x]
    return float("nan") if x is None else x


def warn_if_null(dirs: Directions) -> None:
    """Warn (``NoEvidenceWarning``) when the top direction did not beat its permutation null."""
    if dirs.significant is None and dirs.p_value is not None and not np.isnan(dirs.p_value):
        warnings.warn(
            f"{dirs.method} direction at {dirs.site}: "
            f"{dirs.scores.get('n_permutations')} permutations cannot give p <= alpha = "
            f"{dirs.settings.get('alpha', 0.05)}; significance is undetermined.",
            NoEvidenceWarning,
            stacklevel=3,
        )
    if dirs.significant is False:
        warnings.warn(
            f"{dirs.method} direction at {dirs.site}: held-out AUC "
            f"{dirs.scores.get('heldout_auc', float('nan')):.3f} is not better than label-shuffled "
            f"fits (p = {dirs.p_value:.3f} > alpha = {dirs.settings.get('alpha', 0.05)}). "
            "There is no evidence of a real direction here.",
            NoEvidenceWarning,
            stacklevel=3,
        )
