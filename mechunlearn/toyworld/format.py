"""Text format and tokenization convention of the toy world.

A training/eval sequence is ``<bos>User: {prompt}\\nAssistant: {response}<eos>``:

* ``format_prompt(p) == "User: {p}\\nAssistant:"``; the tokenizer prepends ``<bos>`` itself
  (it is saved with ``add_bos_token=True``, exactly like TransformerLens's string path does),
  so ``model.to_tokens(format_prompt(p))``, ``mechunlearn.tokens.tokenize`` and
  :func:`encode_pairs` all give the same ids.
* ``format_response(r) == " {r}<eos>"``; ``<eos>`` is a special token and counts as a
  response token (the model learns to stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.tokens import TokenBatch, tokenize

EOS = "<eos>"
BOS = "<bos>"
PAD = "<pad>"
UNK = "<unk>"


def format_prompt(prompt: str) -> str:
    """``"User: {prompt}\\nAssistant:"`` (the model continues with the response)."""
    return f"User: {prompt}\nAssistant:"


def format_response(response: str) -> str:
    """``" {response}<eos>"``."""
    return f" {response}{EOS}"


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> TokenBatch:
    """Right-padded prompt tokens ``[n, pos]`` (with ``<bos>``), from raw prompts."""
    if isinstance(prompts, str):
        raise ConfigError("encode_prompts() expects a list of prompts, got a single str.")
    return tokenize(tokenizer, [format_prompt(p) for p in prompts])


def encode_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]) -> TokenBatch:
    """Right-padded prompt+response tokens with ``response_mask`` (response + ``<eos>``).

    Returns a :class:`~mechunlearn.tokens.TokenBatch` with ``[n, pos]`` tensors.
    """
    if isinstance(prompts, str) or isinstance(responses, str):
        raise ConfigError("encode_pairs() expects lists of prompts and responses, got a str.")
    if len(prompts) != len(responses):
        raise ShapeError(f"encode_pairs(): {len(prompts)} prompts but {len(responses)} responses.")
    return tokenize(tokenizer, [(format_prompt(p), format_response(r))
                                for p, r in zip(prompts, responses)])
