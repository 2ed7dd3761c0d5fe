"""Scoring with a language model: logits through a bridge's hooks (the padding mask handed to
an enclosing :func:`mechunlearn.apply`), summed response log-probs, and per-token KL to a
reference. One implementation of each for the whole package."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ShapeError
from mechunlearn.masks import forward_masks


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU for a parameter-less module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def logits(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Logits ``[n, pos, vocab]`` (float32, CPU) of a bridge (through its hooks) or a HF
    causal LM, for ``input_ids``/``attention_mask`` ``[n, pos]``."""
    dev = model_device(model)
    ids, am = input_ids.to(dev), attention_mask.to(dev)
    if hasattr(model, "hook_dict"):
        with forward_masks(am):
            out = model(ids, attention_mask=am, return_type="logits")
    else:
        out = model(input_ids=ids, attention_mask=am).logits
    return out.float().cpu()


def token_kl(ref_logprobs: Tensor, logits: Tensor, mask: Tensor) -> Tensor:
    """Per-sample mean over masked positions of ``KL(p_ref || p)``.

    ``ref_logprobs`` (log-softmaxed) and ``logits``: ``[n, pos, V]``; ``mask [n, pos]`` -> ``[n]``.
    """
    lp = torch.log_softmax(logits.float(), -1)
    kl = (ref_logprobs.exp() * (ref_logprobs - lp)).sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum(1) / m.sum(1).clamp_min(1.0)


def response_logprobs(logits: Tensor, input_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-prob of masked next tokens and their count.

    ``logits [n, pos, V]`` predict ``input_ids[:, 1:]``; ``mask [n, pos]`` marks the tokens to
    score (response & real). Returns ``(logp [n], n_tokens [n])``.
    """
    if logits.shape[:2] != input_ids.shape or mask.shape != input_ids.shape:
        raise ShapeError(
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and mask "
            f"{tuple(mask.shape)} must agree on [n, pos]."
        )
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    tok = lp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:].to(tok.dtype)
    return (tok * m).sum(1), m.sum(1)
