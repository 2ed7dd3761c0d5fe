"""Run every fast path's self-check on a model now (for ``scripts/check_deps.py`` and
``mechunlearn doctor``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from mechunlearn import fastpath
from mechunlearn.errors import ConfigError
from mechunlearn.lm import greedy, plain_lm
from mechunlearn.tokens import TokenBatch, model_tokenizer, tokenize


def check_fast_paths(model: Any, texts: Sequence[str] | TokenBatch,
                     max_new_tokens: int = 8) -> dict[str, dict[str, Any]]:
    """Check each fast path against its reference on ``texts`` and return the findings.

    Forgets earlier results first, then runs: KV-cache decoding on the wrapped Hugging Face
    model (causal LMs), KV-cache decoding through the bridge with its hooks, and the
    early-stopped forward pass of feature extraction; for decoding it also compares the
    greedy tokens of the whole batch with full recompute.

    Args:
        model: a ``TransformerBridge`` (causal LM or encoder).
        texts: a few prompts (or a :class:`TokenBatch`).
        max_new_tokens: tokens decoded per prompt for the token comparison.

    Returns:
        ``{path_key: {"ok": bool, "tokens_equal": bool | None}}`` (``tokens_equal`` is
        ``None`` for extraction).

    Raises:
        ConfigError: the model has no tokenizer and ``texts`` are strings.
    """
    from mechunlearn.features import run_and_capture

    tb = texts if isinstance(texts, TokenBatch) else None
    if tb is None:
        tok = model_tokenizer(model)
        if tok is None:
            raise ConfigError("The model has no tokenizer; pass a TokenBatch of prompts.")
        tb = tokenize(tok, list(texts))
    tok = model_tokenizer(model)
    pad = int(getattr(tok, "pad_token_id", None) or 0) if tok is not None else 0
    fastpath.reset()
    out: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastpath.FastPathMismatchWarning)
        hook = next(n for n in model.hook_dict if n.endswith("hook_resid_post"))
        run_and_capture(model, tb, [hook])
        if _is_causal(model):
            full = greedy(model, tb, max_new_tokens, None, pad, kv_cache=False)
            if plain_lm(model) is not None:
                fast = greedy(model, tb, max_new_tokens, None, pad, kv_cache=None)
                out.update(_entry("hf-kv-cache", fast == full))
            bridge = greedy(model, tb, max_new_tokens, None, pad, kv_cache=True)
            out.update(_entry("bridge-kv-cache", bridge == full))
    for k, v in fastpath.status().items():
        if k.startswith("early-stop"):
            out[k] = {"ok": v, "tokens_equal": None}
    return out


def _entry(prefix: str, equal: bool) -> dict[str, dict[str, Any]]:
    st = fastpath.status()
    return {k: {"ok": v, "tokens_equal": equal} for k, v in st.items() if k.startswith(prefix)}


def _is_causal(model: Any) -> bool:
    name = type(getattr(model, "original_model", None)).__name__
    return name.endswith(("ForCausalLM", "LMHeadModel"))
