"""Greedy decoding of toy-world prompts (bridges, edited bridges, plain HF causal LMs).

Prompts are raw requests, formatted as ``User: ...\\nAssistant:`` (``toyworld.format``) and
decoded by :func:`mechunlearn.lm.greedy` (KV-cache fast path, self-checked at first use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.lm import greedy, logits
from mechunlearn.tokens import model_tokenizer
from mechunlearn.toyworld.data import EvalPrompt
from mechunlearn.toyworld.format import encode_prompts

__all__ = ["generate", "logits"]


def _tok(model: Any, tokenizer: Any | None) -> Any:
    tok = tokenizer if tokenizer is not None else model_tokenizer(model)
    if tok is None:
        raise ConfigError("The model has no tokenizer; pass tokenizer= (the world's tokenizer).")
    return tok


def _prompts(prompts: Sequence[str] | Sequence[EvalPrompt]) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError("Expected a list of prompts, got a single str.")
    if len(prompts) == 0:
        raise EmptyDataError("Got no prompts.")
    return [p.prompt if isinstance(p, EvalPrompt) else p for p in prompts]


def generate(model: Any, prompts: Sequence[str] | Sequence[EvalPrompt],
             max_new_tokens: int = 32, batch_size: int = 64,
             tokenizer: Any | None = None, kv_cache: bool | None = None) -> list[str]:
    """Greedy continuations of raw prompts (formatted as ``User: ...\\nAssistant:``).

    Batched and deterministic; each row stops at ``<eos>`` (not included in the output),
    at ``max_new_tokens`` or at the model's context length. Returns ``n`` strings with the
    leading space stripped. ``kv_cache`` as in :func:`mechunlearn.lm.greedy` (``None``: KV
    cache only when no hook is attached; ``True``: KV cache through the bridge, for edits
    acting on every position alike; ``False``: full recompute).

    Raises:
        ConfigError: a single str instead of a list, or no tokenizer.
        EmptyDataError: no prompts.
        ShapeError: a prompt longer than the model's context.
    """
    tok = _tok(model, tokenizer)
    texts = _prompts(prompts)
    new = greedy(model, encode_prompts(tok, texts), max_new_tokens, tok.eos_token_id,
                 tok.pad_token_id, kv_cache=kv_cache, batch_size=batch_size)
    return [tok.decode(r, skip_special_tokens=True).strip() for r in new]
