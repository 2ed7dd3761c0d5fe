"""Weight-space edits: remove directions from everything that writes to the residual stream.

``orthogonalize_(model, directions)`` replaces every *writer* ``W`` (token, positional and
token-type embeddings, the attention output projection and the MLP output projection of every
block, with their biases) by ``(I - U^T U) W``, ``U`` ``[k, d]`` orthonormal. Its exact
activation-space twin is a projection ``x - (x U^T) U`` applied at each writer's output hook
(:func:`writer_hooks`); ``tests/test_weights.py`` checks the two agree to 1e-4 in float32.

**What is guaranteed.** Pre-LN and parallel-block models (GPT-2, Llama, Mistral, Qwen2/3,
Gemma, Phi-3, OPT, GPT-NeoX, GPT-J, Phi-2; ``tests/test_architectures.py``): the residual
stream is the sum of the writers' outputs, so after the edit it has *no* component along ``U`` at any ``hook_resid_*``.
Post-LN models (BERT): each writer's output is projected *before* the residual add and
LayerNorm; LayerNorm's mean-centring and affine bias can put a component back, so only the
writer outputs (not the normalised stream) are direction-free. Both claims are tested.

**Ties.** A writer tensor shared with a non-writer (GPT-2/BERT tie the unembedding to the
token embedding) is untied first: the other holder gets a private copy of the original
values, so the unembedding is not edited. ``handle.undo()`` restores every edited tensor bit
for bit and re-ties. Hugging Face ``Conv1D`` (GPT-2) stores weights ``[in, out]``; ``nn.Linear``
stores ``[out, in]``; both are handled.

The package (one idea per module; every name stays importable from ``mechunlearn.weights``):

| module | idea |
|---|---|
| ``mechunlearn.weights`` (this file) | ``as_basis``, ``project_out``, ``orthogonalize_``, ``replace_params_`` (the edit itself) |
| :mod:`~mechunlearn.weights.writers` | ``Writer``, ``find_writers``, ``writer_hooks``, ``SUPPORTED`` architectures |
| :mod:`~mechunlearn.weights.snapshot` | ``EditHandle`` (undo), ``snapshot`` (a handle over every parameter) |
| :mod:`~mechunlearn.weights.export` | ``export_hf``, ``hf_state_dict``, ``sync_fused_qkv_`` |

The edit stays in ``__init__`` so that ``mechunlearn.weights._holders`` (patched by tests to
inject a failure midway) is the function ``replace_params_`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechunlearn.errors import ConfigError, ShapeError, check_finite
from mechunlearn.linalg import project_out  # noqa: F401 (part of this package's API)
from mechunlearn.weights.export import (  # noqa: F401 (part of this package's API)
    PER_HEAD_QKV,
    _check_export,
    _interleave,
    export_hf,
    hf_state_dict,
    sync_fused_qkv_,
)
from mechunlearn.weights.snapshot import EditHandle, snapshot  # noqa: F401
from mechunlearn.weights.writers import (  # noqa: F401
    _RESID_HOOK_SUFFIXES,
    SUPPORTED,
    WRITER_KINDS,
    Writer,
    _Dense,
    _inner,
    _is_dense,
    architecture,
    find_writers,
    writer_hooks,
)


def as_basis(directions: Any, d_model: int) -> Tensor:
    """Orthonormal ``[k, d_model]`` float64 basis from a tensor ``[k, d]``/``[d]`` or a
    ``Directions`` object (``.basis``, ``.site``). Non-orthonormal input is orthonormalised
    (QR); rank-deficient input raises :class:`ShapeError`."""
    site = getattr(directions, "site", None)
    u = getattr(directions, "basis", directions)
    if not isinstance(u, Tensor):
        raise ConfigError(f"directions must be a Tensor or Directions, got {type(directions).__name__}.")
    if site is not None:
        hook = getattr(site, "hook_name", str(site))
        if not hook.endswith(_RESID_HOOK_SUFFIXES):
            raise ConfigError(
                f"Directions were found at {hook!r}, which is not a residual-stream "
                f"(d_model) hook; orthogonalisation needs a direction in the residual stream."
            )
    u = u.detach().to(torch.float64)
    if u.ndim == 1:
        u = u[None]
    if u.ndim != 2 or u.shape[1] != d_model or u.shape[0] == 0:
        raise ShapeError(
            f"directions must be [k, d_model={d_model}] with k >= 1, got {tuple(u.shape)}."
        )
    check_finite("directions", u)
    q, r = torch.linalg.qr(u.T)
    if bool((r.diagonal().abs() < 1e-8 * max(1.0, float(u.norm(dim=1).max()))).any()):
        raise ShapeError(f"directions {tuple(u.shape)} are linearly dependent (or zero).")
    return q.T.contiguous()




def _holders(model: Any, p: nn.Parameter, owner: nn.Module) -> list[tuple[nn.Module, str]]:
    found: list[tuple[nn.Module, str]] = []
    seen: set[int] = set()
    roots = [model, getattr(model, "original_model", None)]
    for root in roots:
        if root is None:
            continue
        for mod in root.modules():
            if id(mod) in seen or mod is owner:
                continue
            seen.add(id(mod))
            for attr, q in mod._parameters.items():
                if q is p:
                    found.append((mod, attr))
    return found


def _new_values(w: Writer, u: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
    mod = w.module
    out = []
    W = mod.weight
    W64 = W.detach().to(torch.float64)
    if isinstance(mod, nn.Embedding) or type(mod).__name__ == "Conv1D":  # [*, d] rows
        new = W64 - (W64 @ u.T) @ u
    else:  # nn.Linear [d, in]
        new = W64 - u.T @ (u @ W64)
    out.append((W, new.to(W.dtype)))
    b = getattr(mod, "bias", None)
    if isinstance(b, Tensor):
        b64 = b.detach().to(torch.float64)
        out.append((b, (b64 - (b64 @ u.T) @ u).to(b.dtype)))
    return out


def orthogonalize_(model: Any, directions: Any, writers: Sequence[str] | None = None
                   ) -> EditHandle:
    """Remove ``directions`` from every residual writer of ``model``, in place.

    Args:
        model: a ``TransformerBridge`` whose model type is in :data:`SUPPORTED` (weights of ``model.original_model``,
            shared with the bridge, are edited).
        directions: ``[k, d_model]`` / ``[d_model]`` tensor or a ``Directions`` object (whose
            ``fingerprint``, when set, must be this model's: otherwise ``ModelMismatchWarning``,
            or ``ModelMismatchError`` in strict mode, see :mod:`mechunlearn.provenance`).
        writers: writer kinds to edit (subset of :data:`WRITER_KINDS`; default all).

    Returns:
        :class:`EditHandle`; ``undo()`` restores the weights bit for bit. On any error the model
        is left unchanged.
    """
    from mechunlearn.provenance import check_same_model

    ws = find_writers(model, writers)
    u = as_basis(directions, int(model.cfg.d_model))
    check_same_model(getattr(directions, "fingerprint", None), model, "Directions")
    plan: list[tuple[nn.Parameter, Tensor]] = []
    for w in ws:
        plan.extend(_new_values(w, u.to(w.module.weight.device)))
    return replace_params_(model, ws, plan)


def replace_params_(model: Any, ws: Sequence[Writer], plan: Sequence[tuple[nn.Parameter, Tensor]]
                    ) -> EditHandle:
    """Copy each ``(parameter, new value)`` of ``plan`` (parameters of the writers ``ws``) into
    the model, untying holders shared with non-writers first (see module docstring).

    Returns the :class:`EditHandle` that restores everything bit for bit; on any error the
    model is left unchanged. Used by :func:`orthogonalize_` and :mod:`mechunlearn.ablation`.
    """
    handle = EditHandle(names=[w.name for w in ws])
    owners = {id(p): w.module for w in ws for p in w.module.parameters(recurse=False)}
    try:
        for p, _ in plan:
            for mod, attr in _holders(model, p, owners[id(p)]):
                if not any(m2 is mod and a2 == attr for m2, a2, _ in handle.retied):
                    setattr(mod, attr, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
                    handle.retied.append((mod, attr, p))
        with torch.no_grad():
            for p, new in plan:
                handle.saved.append((p, p.detach().clone()))
                p.copy_(new)
    except BaseException:
        handle.undo()
        raise
    return handle

