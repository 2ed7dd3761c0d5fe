"""What an edit costs on neutral text: KL for language models, representation change for
encoders.

* **Causal LMs** (a Hugging Face ``...ForCausalLM``/``LMHeadModel`` under the bridge):
  ``kl`` = KL(unedited ‖ edited) of the next-token distribution, nats per real token, averaged
  over the neutral texts' tokens.
* **Every model**: the *final representation* (``ln_final.hook_normalized`` if the model has
  a final LayerNorm, else the last block's ``hook_resid_post``, which for post-LN BERT is the
  normalised output), mean-pooled over real tokens, the sentence embedding of
  all-MiniLM-L6-v2 before its L2 normalisation:

  - ``emb_dist``: mean over texts of 1 − cos(e_unedited, e_edited) (0 = unchanged);
  - ``sim_spearman``: Spearman correlation between the texts' pairwise cosine similarities
    before and after the edit (1 = the embedding geometry that retrieval uses is kept).

For an encoder the KL column is NaN on purpose: all-MiniLM-L6-v2's checkpoint has no masked-LM
head (transformers initialises it randomly), so a KL of its logits would measure noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mechunlearn.erasure.context import Edit, edit_context
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.features import extract
from mechunlearn.sites import Site
from mechunlearn.tokens import as_token_batch


def is_causal_lm(model: Any) -> bool:
    """True when the bridge wraps a Hugging Face causal LM (its logits are meaningful)."""
    hf = getattr(model, "original_model", None)
    name = type(hf).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


def final_site(model: Any) -> Site:
    """Site of the final representation, mean-pooled (see module doc)."""
    if "ln_final.hook_normalized" in model.hook_dict:
        return Site("ln_final.hook_normalized", "mean")
    return Site(f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post", "mean")


def _final_embedding(model: Any, texts: Sequence[str], edit: Edit, batch_size: int) -> np.ndarray:
    with edit_context(model, edit):
        f = extract(model, list(texts), final_site(model), batch_size=batch_size, progress=False)
    return f.values.double().numpy()


def _kl(model: Any, texts: Sequence[str], edit: Edit, batch_size: int) -> float:
    tb = as_token_batch(model, list(texts))
    dev = next(model.parameters()).device
    total, count = 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(tb), batch_size):
            b = tb[s:s + batch_size]
            ids, am = b.input_ids.to(dev), b.attention_mask.to(dev)
            ref = model(ids, attention_mask=am, return_type="logits").float().log_softmax(-1)
            with edit_context(model, edit):
                new = model(ids, attention_mask=am, return_type="logits").float().log_softmax(-1)
            kl = (ref.exp() * (ref - new)).sum(-1)
            m = am.to(kl.dtype)
            total += float((kl * m).sum())
            count += float(m.sum())
    return total / max(count, 1.0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def neutral_cost(
    model: Any,
    edit: Edit,
    texts: Sequence[str],
    *,
    reference: np.ndarray | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """How much ``edit`` changes ``model`` on neutral ``texts``.

    Args:
        model: a TransformerBridge.
        edit: ``None``, an Intervention, a ``WeightEdit`` or a callable (see
            :mod:`mechunlearn.erasure.context`).
        texts: neutral texts (not about the concept), at least 2.
        reference: the unedited final embeddings ``[n, d]`` (float64) if already computed.
        batch_size: forward batch size.

    Returns:
        ``{"kl": nats/token (NaN for non-causal models), "emb_dist": mean 1 − cos,
        "sim_spearman": rank correlation of pairwise similarities}``.
    """
    if isinstance(texts, str) or len(texts) < 2:
        raise EmptyDataError("neutral_cost needs a list of at least 2 neutral texts.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    ref = _final_embedding(model, texts, None, batch_size) if reference is None else reference
    new = _final_embedding(model, texts, edit, batch_size)
    na = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    nb = new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
    iu = np.triu_indices(len(texts), 1)
    out = {
        "kl": _kl(model, texts, edit, batch_size) if is_causal_lm(model) else float("nan"),
        "emb_dist": max(0.0, float(np.mean(1.0 - (na * nb).sum(1)))),
        "sim_spearman": _spearman((na @ na.T)[iu], (nb @ nb.T)[iu]),
    }
    return out
