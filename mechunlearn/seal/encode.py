"""Tokenizing (prompt, response) items for a reward model: keep the *end* of long dialogues.

hh-rlhf dialogues often exceed an encoder's window (all-MiniLM-L6-v2 was trained on 128-256
tokens). Right truncation would cut the response, the only part that differs within a pair,
so :func:`encode_items` keeps the **last** ``max_length`` tokens (dropping the start of the
prompt first) and then adds the tokenizer's own special tokens (``[CLS] ... [SEP]`` for BERT,
none for GPT-2 BPE). The response mask marks tokens whose character span ends after the
prompt, as in :func:`mechunlearn.tokens.tokenize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.tokens import TokenBatch, pad_id

Item = tuple[str, str]


def _split_specials(ids: list[int], special: list[int]) -> tuple[int, int]:
    """Number of leading and trailing special tokens."""
    lead = 0
    while lead < len(ids) and special[lead]:
        lead += 1
    trail = 0
    while trail < len(ids) - lead and special[len(ids) - 1 - trail]:
        trail += 1
    return lead, trail


def encode_items(tokenizer: Any, items: Sequence[Item], max_length: int | None = 128,
                 ) -> TokenBatch:
    """Tokenize ``(prompt, response)`` items, left-truncating to ``max_length`` tokens.

    Args:
        tokenizer: a Hugging Face (fast) tokenizer with offsets.
        items: ``(prompt, response)`` string pairs; the text is ``prompt + response``.
        max_length: total tokens per row including special tokens (``None``: no limit).

    Returns:
        :class:`TokenBatch` with right-padded ``input_ids``/``attention_mask``/
        ``response_mask`` of shape ``[n, pos]``.
    """
    if len(items) == 0:
        raise EmptyDataError("encode_items() got no items.")
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2
                and all(isinstance(s, str) for s in item)):
            raise ConfigError(f"Item {i} is {item!r}; expected a (prompt, response) pair of str.")
        prompt, response = item
        enc = tokenizer(prompt + response, add_special_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        special = list(enc["special_tokens_mask"])
        resp = [bool(e > len(prompt)) and not sp
                for (_s, e), sp in zip(enc["offset_mapping"], special)]
        lead, trail = _split_specials(ids, special)
        if max_length is not None and len(ids) > max_length:
            budget = max_length - lead - trail
            if budget <= 0:
                raise ConfigError(
                    f"max_length={max_length} leaves no room besides {lead + trail} special tokens."
                )
            keep = list(range(lead)) + list(range(len(ids) - trail - budget, len(ids)))
            ids, resp = [ids[k] for k in keep], [resp[k] for k in keep]
        if not ids:
            raise EmptyDataError(f"Item {i} ({(prompt + response)[:40]!r}) tokenizes to nothing.")
        rows.append(ids)
        masks.append(resp)
    n, p = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, p), pad_id(tokenizer), dtype=torch.long)
    attn = torch.zeros(n, p, dtype=torch.long)
    rmask = torch.zeros(n, p, dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        rmask[i, : len(r)] = torch.tensor(m, dtype=torch.bool)
    return TokenBatch(input_ids, attn, rmask)


def length_order(batch: TokenBatch) -> torch.Tensor:
    """Permutation sorting rows by length (longest first), to batch similar lengths. ``[n]``."""
    return torch.argsort(batch.attention_mask.sum(1), descending=True, stable=True)
