"""Exporting an (edited) bridge as a plain Hugging Face folder: :func:`export_hf`, with the
fused-qkv sync (:func:`sync_fused_qkv_`) and HF-named weights (:func:`hf_state_dict`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mechunlearn.errors import ArchitectureError
from mechunlearn.tokens import model_tokenizer


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
