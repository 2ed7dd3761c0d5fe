"""Turning texts and (prompt, response) pairs into padded token batches with masks.

Special tokens are the model folder's own tokenizer's (``[CLS] ... [SEP]`` for BERT, none
for a plain GPT-2 BPE, ``<s>`` for Llama): exactly what ``AutoTokenizer.from_pretrained(folder)``
gives. TransformerLens replaces a bridge's tokenizer with a copy that prepends BOS even when
the folder's does not (a model trained without it never saw one); :func:`model_tokenizer`
returns the folder's instead, and ``prepend_bos`` makes the choice explicit.
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


_FOLDER_TOK = "_mechunlearn_folder_tokenizer"


def model_tokenizer(model: Any) -> Any | None:
    """The tokenizer mechunlearn uses for ``model``: its folder's own tokenizer.

    For a bridge loaded by :func:`mechunlearn.models.load_bridge`, the tokenizer it loaded
    from the folder; for another bridge whose tokenizer names a local folder, that folder's
    ``AutoTokenizer`` (loaded once and remembered); otherwise ``model.tokenizer`` (also when
    the user assigned ``model.tokenizer`` themselves after loading). ``None`` if it has none.
    """
    tl = getattr(model, "tokenizer", None)
    if tl is None:
        return None
    pair = getattr(model, _FOLDER_TOK, None)
    if pair is not None:
        bridge_tok, folder_tok = pair
        return folder_tok if tl is bridge_tok else tl
    if not hasattr(model, "hook_dict"):
        return tl
    from pathlib import Path

    path = str(getattr(tl, "name_or_path", "") or "")
    if not (path and Path(path).is_dir()):
        return tl
    from transformers import AutoTokenizer

    try:
        folder_tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return tl
    remember_folder_tokenizer(model, folder_tok)
    return folder_tok


def remember_folder_tokenizer(model: Any, tokenizer: Any) -> None:
    """Record ``tokenizer`` as the folder's own tokenizer of ``model`` (used by
    :func:`model_tokenizer` while ``model.tokenizer`` is still the bridge's)."""
    object.__setattr__(model, _FOLDER_TOK, (getattr(model, "tokenizer", None), tokenizer))


def _bos_fix(ids: list[int], offs: list[Any] | None, bos: int | None, prepend_bos: bool | None,
             ) -> tuple[list[int], list[Any] | None]:
    """Apply ``prepend_bos`` to one encoded row (ids and, for pairs, offsets)."""
    if prepend_bos is None:
        return ids, offs
    if bos is None:
        raise ConfigError("prepend_bos was given but the tokenizer has no BOS token; "
                          "leave prepend_bos=None.")
    has = bool(ids) and ids[0] == bos
    if prepend_bos and not has:
        return [bos] + ids, None if offs is None else [(0, 0)] + list(offs)
    if not prepend_bos and has:
        return ids[1:], None if offs is None else list(offs)[1:]
    return ids, offs


def tokenize(
    tokenizer: Any,
    data: Sequence[str] | Sequence[Pair],
    padding_side: Literal["right", "left"] = "right",
    max_length: int | None = None,
    prepend_bos: bool | None = None,
) -> TokenBatch:
    """Tokenize texts, or (prompt, response) pairs with a response mask.

    For pairs, the text is ``prompt + response`` and response tokens are those whose
    character span ends after ``len(prompt)``: a token straddling the boundary (BPE's
    leading space) counts as response; special tokens (empty spans) never do.

    Args:
        tokenizer: a Hugging Face tokenizer (use :func:`model_tokenizer` for a model's).
        data: ``n`` non-empty texts, or ``n`` (prompt, response) pairs with a non-empty
            response.
        padding_side: where padding goes.
        max_length: truncate each row to this many tokens.
        prepend_bos: ``None`` (default) keeps the tokenizer's own special tokens, as
            ``tokenizer(text)`` does; ``True`` makes every row start with the BOS token;
            ``False`` removes a leading BOS the tokenizer added (TransformerLens's
            ``prepend_bos`` switch, made explicit).

    Returns:
        A :class:`TokenBatch` with int64 ``[n, pos]`` tensors (``response_mask`` only for
        pairs).

    Raises:
        ConfigError: a single str instead of a list, mixed or malformed items.
        EmptyDataError: no items, an empty text or response, or a text with no tokens.
    """
    if padding_side not in ("right", "left"):
        raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    if isinstance(data, str):
        raise ConfigError(f"Got a single str ({data[:40]!r}); pass a list of texts, e.g. "
                          "[text] (a str would be read as one sample per character).")
    if prepend_bos not in (None, True, False):
        raise ConfigError(f"prepend_bos must be None, True or False, got {prepend_bos!r}.")
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
            if not response.strip():
                raise EmptyDataError(f"Item {i} (prompt {prompt[:40]!r}) has an empty response; "
                                     "drop it or give the response text.")
            text = prompt + response
        else:
            if not isinstance(item, str):
                raise ConfigError(f"Item {i} is {type(item).__name__}; expected str (mixed input?).")
            text = item
        if not text.strip():
            raise EmptyDataError(f"Item {i} is an empty text; drop it (it would become a "
                                 "special-tokens-only sample).")
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=pairs)
        ids, offs = _bos_fix(list(enc["input_ids"]),
                             list(enc["offset_mapping"]) if pairs else None,
                             getattr(tokenizer, "bos_token_id", None), prepend_bos)
        if max_length is not None:
            ids = ids[:max_length]
        if not ids:
            raise EmptyDataError(f"Item {i} ({text[:40]!r}) tokenizes to nothing.")
        rows.append(ids)
        if pairs:
            resp_rows.append([e > len(prompt) for _s, e in (offs or [])[: len(ids)]])
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
                   response_mask: Tensor | None = None,
                   prepend_bos: bool | None = None) -> TokenBatch:
    """Normalise any accepted data form to a :class:`TokenBatch` (see :func:`tokenize`;
    texts are tokenized with :func:`model_tokenizer`)."""
    if isinstance(data, TokenBatch):
        return data
    if isinstance(data, Tensor):
        if data.ndim != 2 or data.dtype not in (torch.long, torch.int32, torch.int64):
            raise ShapeError(f"Token tensor must be integer [n, pos], got {data.dtype} {tuple(data.shape)}.")
        am = torch.ones_like(data) if attention_mask is None else attention_mask
        return TokenBatch(data.long(), am.long(), response_mask)
    tok = model_tokenizer(model)
    if tok is None:
        raise ConfigError("The model has no tokenizer; pass token ids (a TokenBatch or tensor).")
    tb = tokenize(tok, data, padding_side=padding_side, prepend_bos=prepend_bos)
    if response_mask is not None:
        tb = TokenBatch(tb.input_ids, tb.attention_mask, response_mask)
    return tb


def context_length(model: Any) -> int:
    """The model's context length in tokens (``cfg.n_ctx`` of a bridge, else the HF config's
    ``n_positions`` / ``max_position_embeddings``; 1024 when none is known)."""
    n = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n:
        return int(n)
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return 1024


def check_fits_context(model: Any, batch: TokenBatch) -> None:
    """Raise :class:`ShapeError` naming the first sample longer than the model's context.

    Args:
        batch: tokens ``[n, pos]`` with their attention mask.
    """
    n_ctx = context_length(model)
    lens = batch.attention_mask.sum(1)
    if len(lens) and int(lens.max()) > n_ctx:
        i = int(torch.nonzero(lens > n_ctx)[0])
        raise ShapeError(f"Sample {i} has {int(lens[i])} tokens, more than the model's context "
                         f"({n_ctx} tokens); shorten or split it (or pass max_length= to "
                         "tokenize to truncate).")
