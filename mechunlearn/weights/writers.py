"""The residual-stream writers of a model: which modules write to the residual stream
(embeddings, attention and MLP output projections), per architecture, and their output hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mechunlearn.errors import ArchitectureError

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

