"""Turning texts and (prompt, response) pairs into padded token batches with masks.

Special tokens are the tokenizer's own (``[CLS] ... [SEP]`` for BERT, none for a plain GPT-2
BPE); no start token is prepended silently (TransformerLens's string path does, which a model
trained without it never saw).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError

Pair = tuple[str, str]
Data = Union[Sequence[str], Sequence[Pair], "TokenBatch", Tensor]


@dataclass(frozen=True)
class TokenBatch:
    """Padded tokens. ``input_ids``/``attention_mask``/``response_mask``: ``[n, pos]``."""

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2:
            raise ShapeError(f"input_ids must be [n, pos], got {tuple(self.input_ids.shape)}.")
        for name in ("attention_mask", "response_mask"):
            m = getattr(self, name)
            if m is not None and m.shape != self.input_ids.shape:
                raise ShapeError(
                    f"{name} shape {tuple(m.shape)} != input_ids shape "
                    f"{tuple(self.input_ids.shape)}."
                )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, idx: slice | Tensor | list[int]) -> TokenBatch:
        r = self.response_mask[idx] if self.response_mask is not None else None
        ids, am = self.input_ids[idx], self.attention_mask[idx]
        cols = am.bool().any(0).nonzero().flatten()
        if len(cols):  # drop columns that are padding in every selected row
            lo, hi = int(cols.min()), int(cols.max()) + 1
            ids, am = ids[:, lo:hi], am[:, lo:hi]
            r = r[:, lo:hi] if r is not None else None
        return TokenBatch(ids, am, r)


def pad_id(tokenizer: Any) -> int:
    """Padding token id: pad, else eos, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def tokenize(
    tokenizer: Any,
    data: Sequence[str] | Sequence[Pair],
    padding_side: Literal["right", "left"] = "right",
    max_length: int | None = None,
) -> TokenBatch:
    """Tokenize texts, or (prompt, response) pairs with a response mask.

    For pairs, the text is ``prompt + response`` and response tokens are those whose
    character span ends after ``len(prompt)``: a token straddling the boundary (BPE's
    leading space) counts as response; special tokens (empty spans) never do.

    Returns a :class:`TokenBatch` with ``[n, pos]`` tensors (``response_mask`` only for pairs).
    """
    if padding_side not in ("right", "left"):
        raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    if len(data) == 0:
        raise EmptyDataError("tokenize() got no texts.")
    pairs = not isinstance(data[0], str)
    rows: list[list[int]] = []
    resp_rows: list[list[bool]] = []
    for i, item in enumerate(data):
        if pairs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)):
                raise ConfigError(f"Item {i} is {item!r}; expected a (prompt, response) pair of str.")
            prompt, response = item
            text = prompt + response
        else:
            if not isinstance(item, str):
                raise ConfigError(f"Item {i} is {type(item).__name__}; expected str (mixed input?).")
            text = item
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=pairs)
        ids = list(enc["input_ids"])
        if max_length is not None:
            ids = ids[:max_length]
        if not ids:
            raise EmptyDataError(f"Item {i} ({text[:40]!r}) tokenizes to nothing.")
        rows.append(ids)
        if pairs:
            offs = enc["offset_mapping"][: len(ids)]
            resp_rows.append([e > len(prompt) for _s, e in offs])
    n, p = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, p), pad_id(tokenizer), dtype=torch.long)
    attn = torch.zeros(n, p, dtype=torch.long)
    resp = torch.zeros(n, p, dtype=torch.bool) if pairs else None
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if padding_side == "right" else slice(p - len(r), p)
        input_ids[i, sl] = torch.tensor(r)
        attn[i, sl] = 1
        if resp is not None:
            resp[i, sl] = torch.tensor(resp_rows[i], dtype=torch.bool)
    return TokenBatch(input_ids, attn, resp)


def as_token_batch(model: Any, data: Data, padding_side: Literal["right", "left"] = "right",
                   attention_mask: Tensor | None = None,
                   response_mask: Tensor | None = None) -> TokenBatch:
    """Normalise any accepted data form to a :class:`TokenBatch` (see :func:`tokenize`)."""
    if isinstance(data, TokenBatch):
        return data
    if isinstance(data, Tensor):
        if data.ndim != 2 or data.dtype not in (torch.long, torch.int32, torch.int64):
            raise ShapeError(f"Token tensor must be integer [n, pos], got {data.dtype} {tuple(data.shape)}.")
        am = torch.ones_like(data) if attention_mask is None else attention_mask
        return TokenBatch(data.long(), am.long(), response_mask)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError("The model has no tokenizer; pass token ids (a TokenBatch or tensor).")
    tb = tokenize(tok, data, padding_side=padding_side)
    if response_mask is not None:
        tb = TokenBatch(tb.input_ids, tb.attention_mask, response_mask)
    return tb
