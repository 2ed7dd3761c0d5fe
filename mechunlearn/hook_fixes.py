"""Corrections for TransformerBridge hook aliases that point at the wrong tensor.

Measured with transformer-lens 4.3.0 (``mechunlearn doctor`` re-checks on every model):

* **BERT** (post-LN): ``blocks.i.hook_attn_out`` aliases ``attn.hook_out``, the output of
  Hugging Face's ``BertAttention``, which is ``LayerNorm(o_proj(z) + resid_pre)`` — the
  residual-added, normalised stream, not what attention writes (upstream issue #1639's kind of
  bug). ``blocks.i.hook_resid_mid`` aliases ``ln2.hook_in``, which is ``resid_mid + mlp_out``
  (the sum *after* the MLP). Corrected: ``hook_attn_out`` -> ``attn.o.hook_out`` (the attention
  output projection, before the add) and ``hook_resid_mid`` -> ``ln1.hook_out`` (the stream
  between attention and MLP). Then ``resid_mid = ln1(resid_pre + attn_out)`` and
  ``resid_post = ln2(resid_mid + mlp_out)`` hold to fp32 precision.

Only the names in ``model.hook_dict`` (which every mechunlearn function and
``run_with_cache`` use) are re-pointed; attribute access such as ``model.blocks[0].hook_attn_out``
still returns TransformerLens's object.
"""

from __future__ import annotations

from typing import Any

#: model_type -> {block alias: (correct target inside the block, why)}
FIXES: dict[str, dict[str, tuple[str, str]]] = {
    "bert": {
        "hook_attn_out": ("attn.o.hook_out", "upstream alias is LayerNorm(attn + resid_pre)"),
        "hook_resid_mid": ("ln1.hook_out", "upstream alias is resid_mid + mlp_out"),
    },
}


def correct_hooks_(model: Any) -> dict[str, str]:
    """Re-point known-wrong block hook aliases of ``model`` in place (idempotent).

    Args:
        model: a ``TransformerBridge`` from ``boot_transformers``.

    Returns:
        ``{alias: new target}`` per block-level alias corrected (empty when nothing applies).
    """
    mtype = getattr(getattr(getattr(model, "original_model", None), "config", None),
                    "model_type", None)
    fixes = FIXES.get(str(mtype), {})
    blocks = getattr(model, "blocks", None)
    if not fixes or blocks is None:
        return {}
    changed = False
    for block in blocks:
        aliases = dict(getattr(block, "hook_aliases", {}) or {})
        for alias, (target, _why) in fixes.items():
            if aliases.get(alias) != target:
                aliases[alias] = target
                changed = True
        block.hook_aliases = aliases
    if changed:
        from transformer_lens.model_bridge.generalized_components.base import (
            _bump_alias_generation,
        )

        _bump_alias_generation()  # hook_dict caches block aliases on this generation
    return {alias: target for alias, (target, _w) in fixes.items()}
