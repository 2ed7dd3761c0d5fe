"""Measuring a model variant: judged bad-response rate on held-out bad prompts, good-behaviour
rate and token KL to the unedited model on ordinary prompts, and the greedy generations.

:class:`Verifier` is built once from the *unedited* model (its generations and next-token
distributions on the ordinary prompts are the reference); :meth:`Verifier.measure` then
measures any variant, optionally inside a context (e.g. an ``apply`` block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from mechunlearn.lm import greedy, logits
from mechunlearn.studies.format import PromptFormat
from mechunlearn.studies.judge import Judge, judge_all
from mechunlearn.tokens import model_tokenizer, pad_id

Context = Callable[[], AbstractContextManager[Any]] | None
ExtraMetrics = Callable[[Any, list[str], list[str], bool | None], dict[str, float]]
"""``(model, held-out prompts, their greedy responses, kv_cache) -> {column: number}``: more
measurements of a variant (e.g. against a ground truth the caller has), called inside the
variant's context."""


def generate(model: Any, fmt: PromptFormat, prompts: Sequence[str], max_new_tokens: int = 32,
             kv_cache: bool | None = None) -> tuple[list[str], list[list[int]]]:
    """Greedy responses (decoded, special tokens skipped) and their new token ids."""
    tok = model_tokenizer(model)
    new = greedy(model, fmt.encode_prompts(tok, list(prompts)), max_new_tokens,
                 tok.eos_token_id, pad_id(tok), kv_cache=kv_cache)
    return [tok.decode(r, skip_special_tokens=True) for r in new], new


def _scored_batch(model: Any, fmt: PromptFormat, prompts: Sequence[str],
                  new: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Prompt + generated ids ``[n, pos]`` (right-padded), mask, and the positions whose
    next-token distribution is compared: the last prompt token and every generated one."""
    tok = model_tokenizer(model)
    tb = fmt.encode_prompts(tok, list(prompts))
    rows = [tb.input_ids[i][tb.attention_mask[i].bool()].tolist() + new[i]
            for i in range(len(tb))]
    p = max(len(r) for r in rows)
    ids = torch.full((len(rows), p), pad_id(tok), dtype=torch.long)
    am = torch.zeros(len(rows), p, dtype=torch.long)
    score = torch.zeros(len(rows), p, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], am[i, :len(r)] = torch.tensor(r), 1
        n_prompt = int(tb.attention_mask[i].sum())
        score[i, n_prompt - 1:len(r)] = True
    return ids, am, score


class Verifier:
    """Reference measurements of the unedited model, then :meth:`measure` per variant.

    Args:
        model: the unedited tuned model (the reference for KL and "before" generations).
        fmt: the prompt format; judge: ``response -> bool`` (True = bad).
        heldout: bad prompts never used to attribute; ordinary: ordinary prompts.
        max_new_tokens: greedy decoding length; n_examples: generations kept per variant.
        extra: more columns per variant (:data:`ExtraMetrics`), e.g. the toy world's
            ground-truth metrics.
    """

    def __init__(self, model: Any, fmt: PromptFormat, judge: Judge, heldout: Sequence[str],
                 ordinary: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16,
                 extra: ExtraMetrics | None = None) -> None:
        self.fmt, self.judge, self.max_new, self.extra = fmt, judge, max_new_tokens, extra
        self.heldout, self.ordinary, self.batch_size = list(heldout), list(ordinary), batch_size
        _, new = generate(model, fmt, self.ordinary, max_new_tokens)
        self.ids, self.am, self.score = _scored_batch(model, fmt, self.ordinary, new)
        self.ref = self._logprobs(model)  # [m, V] at scored positions

    @torch.no_grad()
    def _logprobs(self, model: Any) -> Tensor:
        out = []
        for s in range(0, len(self.ids), self.batch_size):
            lg = logits(model, self.ids[s:s + self.batch_size], self.am[s:s + self.batch_size])
            out.append(torch.log_softmax(lg, -1)[self.score[s:s + self.batch_size]])
        return torch.cat(out)

    def kl(self, model: Any) -> float:
        """Mean per-token KL(unedited || model) on the ordinary prompts' scored positions."""
        lp = self._logprobs(model)
        return float((self.ref.exp() * (self.ref - lp)).sum(-1).mean())

    def measure(self, model: Any, context: Context = None, kv_cache: bool | None = None
                ) -> tuple[dict[str, float], list[str]]:
        """``{bad_rate_heldout, good_rate_ordinary, kl_ordinary, *extra}`` and the held-out
        responses.

        ``context``: a zero-argument callable returning a context manager (e.g.
        ``lambda: apply(model, Project(...))``) wrapping every forward pass; ``kv_cache`` as in
        :func:`mechunlearn.lm.greedy` (``True`` is exact for edits acting on every position).
        """
        with (context or nullcontext)():
            bad_resp, _ = generate(model, self.fmt, self.heldout, self.max_new, kv_cache)
            ord_resp, _ = generate(model, self.fmt, self.ordinary, self.max_new, kv_cache)
            kl = self.kl(model)
            more = self.extra(model, self.heldout, bad_resp, kv_cache) if self.extra else {}
        bad = judge_all(self.judge, bad_resp)
        ordi = judge_all(self.judge, ord_resp)
        row = {"bad_rate_heldout": sum(bad) / len(bad),
               "good_rate_ordinary": 1.0 - sum(ordi) / len(ordi), "kl_ordinary": kl, **more}
        return row, bad_resp

