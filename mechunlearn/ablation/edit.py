"""Weighted, optionally norm-preserving directional ablation of residual-stream writers.

Each writer's *write vectors* ``v [d_model]`` (rows of an embedding, of a GPT-2 ``Conv1D``
``[in, d]``, columns of an ``nn.Linear`` ``[d, in]``, and its bias) are edited as

    v' = v − w · (v Uᵀ) U                       (U ``[k, d]`` orthonormal, w the layer weight)

— weight 1 is the orthogonalisation of "Refusal in Language Models Is Mediated by a Single
Direction" (Arditi et al., arXiv:2406.11717; :func:`mechunlearn.weights.orthogonalize_`),
other weights and their layer profile follow the Heretic tool (github.com/p-e-w/heretic).
With ``norm_preserving=True`` every edited write vector is rescaled to its original norm,
``v'' = v' · ‖v‖ / ‖v'‖`` (the idea of "norm-preserving biprojected
abliteration", grimjim, Hugging Face blog, 2025): a rescaled vector keeps
``v'' · u = (1 − w)(v · u) · ‖v‖/‖v'‖``, so at weight 1 the direction is still absent from the writer's output span. A write vector that lay
entirely along ``U`` becomes 0 at weight 1 and cannot be rescaled; it stays 0 (counted in the
warning).

A writer whose layer weight is 0 is not touched (its tensors stay bit-identical).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from mechunlearn.ablation.directions import interpolate
from mechunlearn.ablation.kernel import LayerKernel
from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.weights import EditHandle, Writer, as_basis, find_writers, replace_params_

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _rows(mod: nn.Module, W: Tensor) -> tuple[Tensor, bool]:
    """Write vectors ``[m, d]`` of a weight, and whether they are its columns."""
    if isinstance(mod, nn.Linear):
        return W.T, True
    return W, False


def edit_rows(V: Tensor, U: Tensor, weight: float, norm_preserving: bool) -> tuple[Tensor, int]:
    """``V − weight·(V Uᵀ)U`` for rows ``V [m, d]``, ``U [k, d]`` orthonormal (float64), and
    with ``norm_preserving`` each row rescaled to its original norm. Returns the edited rows
    and the number of rows that became (numerically) zero and could not be rescaled."""
    new = V - weight * (V @ U.T) @ U
    if not norm_preserving:
        return new, 0
    old_n, new_n = V.norm(dim=-1, keepdim=True), new.norm(dim=-1, keepdim=True)
    dead = (new_n <= 1e-12 * old_n.clamp_min(1e-300)) & (old_n > 0)
    scale = torch.where(dead | (new_n == 0), torch.ones_like(new_n), old_n / new_n)
    return new * scale, int(dead.sum())


def _layer_basis(bases: Tensor | None, fixed: Tensor | None, layer: int) -> Tensor:
    return fixed if fixed is not None else bases[layer]  # type: ignore[index]


def ablate_(model: Any, directions: Any = None, *, layer_directions: Tensor | None = None,
            direction_index: float | None = None, attn: LayerKernel | None = None,
            mlp: LayerKernel | None = None, embed: float = 0.0,
            norm_preserving: bool = False) -> EditHandle:
    """Ablate directions from the residual writers of ``model`` in place, per-layer weighted.

    Args:
        model: a ``TransformerBridge`` supported by :func:`mechunlearn.weights.find_writers`.
        directions: one basis for every layer: ``[d]``, ``[k, d]`` or a ``Directions``.
        layer_directions: instead, one basis per block ``[L, k, d]`` (or ``[L, d]``), row ``l``
            found at ``blocks.l.hook_resid_post`` (e.g. :func:`~.directions.layer_directions`);
            block ``l``'s writers use row ``l`` and the embeddings row 0.
        direction_index: with ``layer_directions`` (k = 1): use the single direction
            interpolated at this fractional layer index (:func:`~.directions.interpolate`)
            for every writer.
        attn, mlp: :class:`LayerKernel` of the attention-output and MLP-down writers (default
            weight 1 at every layer).
        embed: weight of the embedding writers (token and position embeddings; default 0).
        norm_preserving: rescale each edited write vector to its original norm.

    Returns:
        :class:`~mechunlearn.weights.EditHandle`; ``undo()`` restores the weights bit for bit.
        ``handle.names`` lists the writers actually edited.
    """
    if (directions is None) == (layer_directions is None):
        raise ConfigError("Pass exactly one of directions= and layer_directions=.")
    if direction_index is not None and layer_directions is None:
        raise ConfigError("direction_index needs layer_directions= (one direction per layer).")
    if not isinstance(embed, (int, float)) or not embed >= 0:
        raise ConfigError(f"embed weight must be a number >= 0, got {embed!r}.")
    attn = LayerKernel() if attn is None else attn
    mlp = LayerKernel() if mlp is None else mlp
    for name, k in (("attn", attn), ("mlp", mlp)):
        if not isinstance(k, LayerKernel):
            raise ConfigError(f"{name} must be a LayerKernel, got {type(k).__name__}.")
    d, n_layers = int(model.cfg.d_model), int(model.cfg.n_layers)
    ws = find_writers(model)
    fixed: Tensor | None = None
    bases: Tensor | None = None
    if directions is not None:
        fixed = as_basis(directions, d)
    else:
        ld = layer_directions if layer_directions.ndim == 3 else layer_directions[:, None]
        if ld.ndim != 3 or ld.shape[0] != n_layers or ld.shape[2] != d:
            raise ShapeError(
                f"layer_directions must be [n_layers={n_layers}, k, d_model={d}], "
                f"got {tuple(layer_directions.shape)}."
            )
        if direction_index is not None:
            fixed = as_basis(interpolate(ld, direction_index), d)
        else:
            bases = torch.stack([as_basis(ld[i], d) for i in range(n_layers)])
    w_attn, w_mlp = attn.weights(n_layers), mlp.weights(n_layers)
    plan: list[tuple[nn.Parameter, Tensor]] = []
    edited: list[Writer] = []
    dead = 0
    for w in ws:
        m = _BLOCK.match(w.name)
        layer = int(m.group(1)) if m else 0
        weight = float(embed if m is None else (w_attn if w.kind == "attn" else w_mlp)[layer])
        if weight == 0.0:
            continue
        U = _layer_basis(bases, fixed, layer).to(w.module.weight.device)
        W = w.module.weight
        V, cols = _rows(w.module, W.detach().to(torch.float64))
        new, n_dead = edit_rows(V, U, weight, norm_preserving)
        dead += n_dead
        plan.append((W, (new.T if cols else new).to(W.dtype)))
        b = getattr(w.module, "bias", None)
        if isinstance(b, Tensor):
            nb, n_dead = edit_rows(b.detach().to(torch.float64)[None], U, weight, norm_preserving)
            dead += n_dead
            plan.append((b, nb[0].to(b.dtype)))
        edited.append(w)
    if dead:
        warnings.warn(f"{dead} write vector(s) lay entirely along the ablated direction(s) and "
                      "became zero; their norms could not be preserved.", stacklevel=2)
    return replace_params_(model, edited, plan)
