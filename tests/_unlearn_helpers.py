"""Helpers shared by the unlearning tests (not a test module itself)."""

from __future__ import annotations

import torch

FORGET = [("the quick", " brown fox", " lazy dog"), ("over the", " jumps over", " lazy dog")]
RETAIN = [("fox jumps", " over the"), ("the lazy", " dog sleeps"), ("a brown", " fox runs"),
          ("quick fox", " jumps high")]


def retain_batch(model):
    """``(input_ids, attention_mask)`` of :data:`RETAIN` with ``model``'s tokenizer."""
    from mechunlearn.tokens import model_tokenizer, tokenize

    tb = tokenize(model_tokenizer(model), RETAIN)
    return tb.input_ids, tb.attention_mask


def state(m):
    """A copy of every tensor of ``m``'s state dict."""
    return {k: v.clone() for k, v in m.state_dict().items()}


def same(m, s) -> bool:
    """Whether ``m``'s state dict equals ``s`` bit for bit."""
    return all(torch.equal(s[k], v) for k, v in m.state_dict().items())


def avg_logp(model, prompt, resp) -> float:
    """Mean response-token log-prob of ``resp`` after ``prompt`` (folder tokenizer)."""
    from mechunlearn.lm import response_logprobs
    from mechunlearn.tokens import model_tokenizer, tokenize

    tb = tokenize(model_tokenizer(model), [(prompt, resp)])
    with torch.no_grad():
        lp, n = response_logprobs(model(tb.input_ids, attention_mask=tb.attention_mask),
                                  tb.input_ids, tb.response_mask & tb.attention_mask.bool())
    return float(lp / n)
