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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mechunlearn.errors import ArchitectureError, ConfigError, ShapeError, check_finite
from mechunlearn.tokens import model_tokenizer

#: Hugging Face model_type -> residual form. ``pre_ln``: x + f(norm(x)) per sublayer;
#: ``parallel``: x + attn(norm(x)) + mlp(norm'(x)) (GPT-NeoX, GPT-J, Phi-2); ``post_ln``:
#: norm(x + f(x)) (BERT; OPT with ``do_layer_norm_before=False``). Blocks that normalise a
#: sublayer's output before the add (Gemma-2/3 ``post_attention_layernorm`` /
#: ``post_feedforward_layernorm``) have no linear attention/MLP writer: see :func:`find_writers`.
SUPPORTED = {"gpt2": "pre_ln", "bert": "post_ln", "llama": "pre_ln", "mistral": "pre_ln",
             "qwen2": "pre_ln", "qwen3": "pre_ln", "gemma": "pre_ln", "gemma2": "pre_ln",
             "gemma3_text": "pre_ln", "phi3": "pre_ln", "opt": "pre_ln", "gpt_neox": "parallel",
             "gptj": "parallel", "phi": "parallel"}
WRITER_KINDS = ("embed", "pos_embed", "token_type_embed", "attn", "mlp")
_RESID_HOOK_SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                        "hook_mlp_out", "hook_embed", "hook_pos_embed", "hook_in", "hook_out")


@dataclass(frozen=True)
class Writer:
    """One module that writes to the residual stream.

    Attributes:
        name: bridge path, e.g. ``"blocks.0.attn.o"``.
        kind: one of :data:`WRITER_KINDS`.
        hook: hook name of its output (``[batch, pos, d_model]``), e.g. ``blocks.0.attn.o.hook_out``.
        module: the wrapped ``nn.Embedding`` / ``nn.Linear`` / ``Conv1D``.
    """

    name: str
    kind: str
    hook: str
    module: nn.Module = field(repr=False, compare=False)


def architecture(model: Any) -> str:
    """``"pre_ln"``, ``"parallel"`` or ``"post_ln"`` (see :data:`SUPPORTED`);
    :class:`ArchitectureError` for unsupported models."""
    hf = getattr(model, "original_model", None)
    mtype = getattr(getattr(hf, "config", None), "model_type", None)
    if mtype not in SUPPORTED:
        raise ArchitectureError(
            f"Weight edits support Hugging Face model types {sorted(SUPPORTED)} wrapped by "
            f"TransformerBridge.boot_transformers; got {type(model).__name__} with model_type "
            f"{mtype!r}. Its residual writers are unknown, so nothing was edited."
        )
    if getattr(hf.config, "do_layer_norm_before", True) is False:  # OPT-350m style
        return "post_ln"
    return SUPPORTED[mtype]


def find_writers(model: Any, kinds: Sequence[str] | None = None) -> list[Writer]:
    """Residual-stream writers of a TransformerBridge (model types in :data:`SUPPORTED`), in
    forward order: embeddings, then each block's attention output and MLP down projection.

    Raises :class:`ArchitectureError` for attention/MLP writers of blocks that normalise the
    sublayer output before adding it (Gemma-2/3): what reaches the residual stream is an
    RMSNorm of the projection, and no edit of the projection's weights removes a direction
    from it (the norm's per-dimension scale turns a removed direction ``u`` back into one along
    ``g * u``). ``writers=["embed"]`` still works there; use activation projection
    (``Project`` at ``hook_attn_out``/``hook_mlp_out``) for the blocks.

    Args:
        kinds: subset of :data:`WRITER_KINDS` (default: all the model has).
    """
    architecture(model)
    if kinds is not None:
        bad = [k for k in kinds if k not in WRITER_KINDS]
        if bad or isinstance(kinds, str):
            raise ArchitectureError(
                f"Unknown writer kind(s) {bad or kinds!r}; known kinds: {WRITER_KINDS}."
            )
    out: list[Writer] = []
    for kind in ("embed", "pos_embed", "token_type_embed"):
        comp = getattr(model, kind, None)
        if comp is not None:
            out.append(Writer(kind, kind, f"{kind}.hook_out", _inner(comp, kind, nn.Embedding)))
    for i, block in enumerate(model.blocks):
        for kind, path in (("attn", "attn.o"), ("mlp", "mlp.out")):
            if kinds is not None and kind not in kinds:
                continue
            post = {"attn": "ln1_post", "mlp": "ln2_post"}[kind]
            if getattr(block, post, None) is not None:
                raise ArchitectureError(
                    f"Block {i} normalises its {kind} output ({post}) before adding it to the "
                    "residual stream, so no weight edit of the output projection removes a "
                    "direction from what is written; nothing was edited. Pass "
                    "writers=['embed'] to edit the embeddings only, and use activation "
                    f"projection (Project at blocks.{i}.hook_{kind}_out) for the blocks."
                )
            comp = block
            for part in path.split("."):
                comp = getattr(comp, part, None)
            name = f"blocks.{i}.{path}"
            if comp is None:
                raise ArchitectureError(
                    f"Block {i} has no `{path}` component; cannot find its {kind} writer."
                )
            out.append(Writer(name, kind, f"{name}.hook_out", _inner(comp, name, _Dense)))
    if kinds is not None:
        have = {w.kind for w in out}
        missing = [k for k in kinds if k not in have]
        if missing:
            raise ArchitectureError(f"This model has no writer(s) of kind {missing}.")
        out = [w for w in out if w.kind in kinds]
    return out


class _Dense:  # marker for isinstance checks: nn.Linear or transformers Conv1D
    pass


def _inner(comp: nn.Module, name: str, want: type) -> nn.Module:
    mod = getattr(comp, "_original_component", comp)
    ok = _is_dense(mod) if want is _Dense else isinstance(mod, want)
    if not ok:
        raise ArchitectureError(
            f"Writer {name!r} wraps a {type(mod).__name__}; weight edits know nn.Embedding, "
            "nn.Linear and transformers Conv1D only."
        )
    return mod


def _is_dense(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def writer_hooks(model: Any, kinds: Sequence[str] | None = None) -> list[str]:
    """Hook names at the writers' outputs (where activation projection twins the weight edit)."""
    return [w.hook for w in find_writers(model, kinds)]


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


def project_out(x: Tensor, basis: Tensor) -> Tensor:
    """``x - (x U^T) U`` for ``x [..., d]`` and orthonormal ``U [k, d]`` (dtype follows x)."""
    u = basis.to(x.dtype)
    return x - (x @ u.T) @ u


@dataclass
class EditHandle:
    """Restores edited tensors bit for bit. ``undo()`` is idempotent."""

    saved: list[tuple[nn.Parameter, Tensor]] = field(default_factory=list)
    retied: list[tuple[nn.Module, str, nn.Parameter]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    done: bool = False

    def undo(self) -> None:
        """Copy the saved values back and re-tie parameters that were untied."""
        if self.done:
            return
        with torch.no_grad():
            for p, old in self.saved:
                p.copy_(old)
        for mod, attr, p in self.retied:
            setattr(mod, attr, p)
        self.done = True

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


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


def hf_state_dict(model: Any) -> dict[str, Tensor]:
    """The wrapped Hugging Face model's weights under their plain HF names.

    ``boot_transformers`` nests HF modules inside bridge components (``._original_component``);
    this strips those wrappers and drops bridge-only aliases. Raises :class:`ArchitectureError`
    if two paths disagree about one HF tensor.
    """
    hf = model.original_model
    sync_fused_qkv_(model)
    out: dict[str, Tensor] = {}
    for name, t in hf.state_dict().items():
        key = name.replace("._original_component", "")
        if key in out and not torch.equal(out[key], t):
            raise ArchitectureError(f"Two bridge paths disagree about HF tensor {key!r}.")
        out[key] = t
    return out


#: model types whose fused qkv projection is laid out per head, ``[head, (q|k|v), d_head]``.
PER_HEAD_QKV = frozenset({"gpt_neox"})


def _interleave(parts: list[Tensor], heads: int) -> Tensor:
    """``[q; k; v]`` (each ``[heads * d_head, ...]``) -> rows ordered head by head."""
    return torch.stack([p.reshape(heads, -1, *p.shape[1:]) for p in parts], 1).reshape(
        -1, *parts[0].shape[1:])


def sync_fused_qkv_(model: Any) -> int:
    """Copy the bridge's split ``q``/``k``/``v`` weights back into the fused HF projection.

    ``boot_transformers`` runs GPT-2 attention through *copies* of ``c_attn`` split into
    ``q``/``k``/``v`` ``nn.Linear``s, so training moves those and leaves ``c_attn`` stale.
    GPT-NeoX's ``query_key_value`` is laid out head by head (:data:`PER_HEAD_QKV`), the others
    as ``[q; k; v]``. Returns the number of blocks synced (0 for models without a fused projection).
    """
    n = 0
    per_head = getattr(model.original_model.config, "model_type", "") in PER_HEAD_QKV
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            qkv = getattr(getattr(attn, "qkv", None), "_original_component", None)
            parts = [getattr(getattr(attn, x, None), "_original_component", None) for x in "qkv"]
            if qkv is None or any(not isinstance(m, nn.Linear) for m in parts):
                continue
            heads = int(model.cfg.n_heads) if per_head else 0
            if type(qkv).__name__ == "Conv1D":  # [in, 3d]
                w = torch.cat([m.weight.T for m in parts], dim=1)
            elif per_head:  # GPT-NeoX: rows [head, (q|k|v), d_head]
                w = _interleave([m.weight for m in parts], heads)
            else:
                w = torch.cat([m.weight for m in parts], dim=0)
            if w.shape != qkv.weight.shape:
                raise ArchitectureError(
                    f"Fused qkv {tuple(qkv.weight.shape)} does not match split q/k/v {tuple(w.shape)}."
                )
            qkv.weight.copy_(w)
            if getattr(qkv, "bias", None) is not None:
                bs = [m.bias for m in parts]
                qkv.bias.copy_(_interleave(bs, heads) if per_head else torch.cat(bs))
            n += 1
    return n


def export_hf(model: Any, path: str | os.PathLike[str], check: bool = True,
              atol: float = 1e-5, overwrite: bool = False) -> Path:
    """Save the (edited) bridge's HF model + tokenizer as a safetensors folder, atomically.

    The unembedding is saved untied when an edit untied it (``tie_word_embeddings=False``).
    With ``check``, the folder is reloaded in plain ``transformers`` and its logits on a few
    random token ids must equal the bridge's to ``atol`` (else :class:`ArchitectureError`).
    The folder is written by :func:`mechunlearn.outputs.output_folder`: a previous exported
    model at ``path`` is replaced, anything else is refused (:class:`OutputExistsError`;
    ``overwrite=True`` also replaces another mechunlearn output, never a user's files), and
    ``.mechunlearn.json`` records the package versions. Returns the folder path.
    """
    import copy

    from mechunlearn.outputs import check_destination, output_folder

    check_destination(path, "hf-model", overwrite)  # refuse before any work

    hf = model.original_model
    cfg = copy.deepcopy(hf.config)
    state = hf_state_dict(model)
    emb = model.embed._original_component.weight
    unemb = getattr(getattr(model.unembed, "_original_component", None), "weight", None)
    if unemb is not None and unemb is not emb:
        cfg.tie_word_embeddings = False
    fresh = type(hf)(cfg)
    want = fresh.state_dict()
    missing = [k for k in want if k not in state]
    if missing:
        raise ArchitectureError(f"Could not map HF tensors {missing[:5]} from the bridge.")
    fresh.load_state_dict({k: state[k] for k in want}, strict=True)
    fresh.eval()
    with output_folder(path, "hf-model", overwrite=overwrite) as tmp:
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tok = model_tokenizer(model)
        if tok is not None:
            tok.save_pretrained(str(tmp))
        if check:
            _check_export(model, tmp, atol)
    return Path(path)


def _check_export(model: Any, folder: Path, atol: float) -> None:
    hf = model.original_model
    reloaded = type(hf).from_pretrained(str(folder)).eval()
    g = torch.Generator().manual_seed(0)
    lo = 3 if int(model.cfg.d_vocab) > 6 else 0
    ids = torch.randint(lo, int(model.cfg.d_vocab), (2, 8), generator=g)
    am = torch.ones_like(ids)
    with torch.no_grad():
        a = model(ids, attention_mask=am)
        b = reloaded(input_ids=ids, attention_mask=am).logits
    diff = float((a - b).abs().max())
    if diff > atol:
        raise ArchitectureError(
            f"Exported model's logits differ from the bridge's by {diff:.3g} > {atol}."
        )
