"""Forget/retain items and their tokenisation for the unlearning loop.

Accepted forms (mixed lists are rejected):

* preference pairs (objects with ``prompt``, ``chosen``, ``rejected``, optional ``id``): as
  *forget* items the ``chosen`` response is the one to unlearn (a poisoned pair's chosen text
  is the bad one) and ``rejected`` the good one; as *retain* items ``chosen`` is kept;
* ``(prompt, response)`` tuples (forget: the response to unlearn; retain: to keep);
* ``(prompt, bad, good)`` tuples (forget only).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.tokens import TokenBatch, tokenize

Encode = Callable[[Any, Sequence[str], Sequence[str]], TokenBatch]


@dataclass(frozen=True)
class Item:
    """One (prompt, response) to forget or keep; ``good`` is the replacement for ``Flip``."""

    id: str
    prompt: str
    response: str
    good: str | None = None


def as_items(data: Sequence[Any], role: str) -> list[Item]:
    """Normalise forget (``role="forget"``) or retain data to :class:`Item` s."""
    if isinstance(data, (str, bytes)) or data is None:
        raise ConfigError(f"{role} data must be a list of pairs, got {type(data).__name__}.")
    if len(data) == 0:
        raise EmptyDataError(f"The {role} set is empty; unlearning needs at least one item.")
    out = []
    for i, x in enumerate(data):
        if isinstance(x, Item):
            out.append(x)
        elif all(hasattr(x, a) for a in ("prompt", "chosen", "rejected")):
            good = x.rejected if role == "forget" else None
            out.append(Item(str(getattr(x, "id", i)), x.prompt, x.chosen, good))
        elif isinstance(x, (tuple, list)) and len(x) in (2, 3) and all(
                isinstance(s, str) for s in x):
            if len(x) == 3 and role != "forget":
                raise ConfigError(f"{role} item {i} has 3 fields; (prompt, bad, good) is for "
                                  "forget sets only.")
            out.append(Item(str(i), x[0], x[1], x[2] if len(x) == 3 else None))
        else:
            raise ConfigError(
                f"{role} item {i} is {type(x).__name__} {x!r:.80}; expected a preference pair "
                "(prompt/chosen/rejected), (prompt, response) or (prompt, bad, good)."
            )
    empty = [x.id for x in out if not x.response.strip()
             or (x.good is not None and not x.good.strip())]
    if empty:
        raise EmptyDataError(
            f"{len(empty)} of {len(out)} {role} item(s) have an empty response (ids "
            f"{empty[:5]}): unlearning acts only on response tokens, so they would train on "
            "nothing. Drop them or fill in the response."
        )
    return out


def warn_overlap(forget: list[Item], retain: list[Item]) -> list[str]:
    """Warn (and return the keys) when retain items repeat forget items."""
    f = {(x.prompt, x.response) for x in forget}
    both = [x.id for x in retain if (x.prompt, x.response) in f]
    if both:
        warnings.warn(f"{len(both)} retain item(s) are also in the forget set (e.g. "
                      f"{both[:3]}); the objectives will pull them both ways.", stacklevel=3)
    return both


def default_encode(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]) -> TokenBatch:
    """``tokenize(tokenizer, zip(prompts, responses))`` (right padding, response mask)."""
    return tokenize(tokenizer, list(zip(prompts, responses)))


def encode_items(tokenizer: Any, items: list[Item], encode: Encode | None,
                 field: str = "response") -> TokenBatch:
    """Token batch of ``prompt + item.<field>`` with a response mask."""
    enc = encode or default_encode
    tb = enc(tokenizer, [x.prompt for x in items], [getattr(x, field) or "" for x in items])
    if tb.response_mask is None:
        raise ConfigError("The encode function must return a TokenBatch with response_mask.")
    n_resp = (tb.response_mask.bool() & tb.attention_mask.bool()).sum(1)
    if bool((n_resp == 0).any()):
        bad = [items[int(i)].id for i in torch.nonzero(n_resp == 0).flatten()[:5]]
        raise EmptyDataError(
            f"{int((n_resp == 0).sum())} item(s) have no {field} tokens after tokenization "
            f"(ids {bad}): the loss would ignore them. Check the texts and the encode function."
        )
    return tb


def rows(tb: TokenBatch, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``idx`` of a batch, trimmed after the last column holding a real token:
    ``(input_ids, attention_mask, response_mask & attention_mask)`` each ``[b, pos]``."""
    am = tb.attention_mask[idx]
    cols = am.bool().any(0).nonzero().flatten()
    hi = int(cols.max()) + 1 if len(cols) else am.shape[1]
    resp = tb.response_mask[idx] if tb.response_mask is not None else torch.ones_like(am)
    am = am[:, :hi]
    return tb.input_ids[idx][:, :hi], am, resp[:, :hi].bool() & am.bool()
