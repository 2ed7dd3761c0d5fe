"""A cheap stop metric for unlearning edits: decode only to confirm.

The unlearning loop stops its forget phase when ``forget_metric(model) <= target`` (checked
every ``eval_every`` steps). Judging greedy answers on every check decodes token by token;
:class:`BadAnswerTracker` instead remembers the token ids of every bad greedy answer it has
seen and, on each check, runs **one teacher-forced forward pass** over them: a prompt is
still answered badly for sure if the model's top-1 prediction still reproduces one of its
remembered bad answers token for token (that is exactly what greedy decoding would emit).
Only when the share of prompts whose remembered answer is still greedy is at or below
``target`` (0: none left) does it decode and judge (the confirm), and any new bad answer
found then is remembered too. So the value it returns is exact whenever it decodes, and a
lower bound of the true share of bad prompts otherwise (only returned when it is already
above ``target``); it never reports "at or below target" without a decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechunlearn.studies.format import PromptFormat
from mechunlearn.studies.judge import Judge, judge_all
from mechunlearn.studies.verify import generate
from mechunlearn.tokens import model_tokenizer, pad_id


class BadAnswerTracker:
    """``tracker(model) -> float``: share of ``prompts`` the model still answers badly.

    Args:
        fmt: how prompts are encoded (the edit's :class:`PromptFormat`).
        judge: ``response -> bool`` (True = bad).
        prompts: the bad prompts watched (duplicates are dropped).
        max_new_tokens: length of the confirming greedy decode.
        target: the loop's stop target (``UnlearnConfig.target``, a share in [0, 1]); a
            teacher-forced lower bound at or below it is confirmed by decoding.

    Attributes ``n_checks`` (teacher-forced checks) and ``n_decodes`` (confirming decodes)
    count the work done; :meth:`find_bad` returns the current bad ``(prompt, response)``
    pairs (decoding; for :func:`mechunlearn.unlearn.selective_forget`).
    """

    def __init__(self, fmt: PromptFormat, judge: Judge, prompts: Sequence[str],
                 max_new_tokens: int = 16, target: float = 0.0) -> None:
        self.fmt, self.judge, self.target = fmt, judge, float(target)
        self.prompts = list(dict.fromkeys(prompts))
        self.max_new_tokens = max_new_tokens
        self.tracked: dict[str, list[list[int]]] = {}
        self.n_checks = self.n_decodes = 0
        self.last_share = float("nan")

    def __call__(self, model: Any) -> float:
        if self.tracked:
            self.n_checks += 1
            share = len(self._still_greedy(model)) / len(self.prompts)
            if share > self.target:  # a lower bound already above target: no decode needed
                return share
        self.find_bad(model)
        return self.last_share

    def find_bad(self, model: Any) -> list[tuple[str, str]]:
        """Decode, judge, remember the bad answers' ids; the bad ``(prompt, response)``
        pairs (empty responses judged bad count in the share but are not returned)."""
        self.n_decodes += 1
        rs, new = generate(model, self.fmt, self.prompts, self.max_new_tokens)
        out, verdicts = [], judge_all(self.judge, rs)
        for p, r, ids, b in zip(self.prompts, rs, new, verdicts):
            if not b:
                continue
            known = self.tracked.setdefault(p, [])
            if ids and ids not in known:
                known.append(list(ids))
            if r.strip():
                out.append(self.fmt.pairs([p], [r])[0])
        self.last_share = sum(verdicts) / len(self.prompts)
        return out

    @torch.no_grad()
    def _still_greedy(self, model: Any) -> set[str]:
        """Prompts one of whose remembered bad answers the model still emits greedily."""
        from mechunlearn.unlearn.reference import forward

        tok = model_tokenizer(model)
        items = [(p, ids) for p, seqs in self.tracked.items() for ids in seqs]
        tb = self.fmt.encode_prompts(tok, [p for p, _ in items])
        rows = [tb.input_ids[i][tb.attention_mask[i].bool()].tolist() for i in range(len(tb))]
        full = [r + ids for r, (_, ids) in zip(rows, items)]
        n = max(len(r) for r in full)
        x = torch.full((len(full), n), pad_id(tok), dtype=torch.long)
        am = torch.zeros(len(full), n, dtype=torch.long)
        for i, r in enumerate(full):
            x[i, : len(r)], am[i, : len(r)] = torch.tensor(r), 1
        top = forward(model, x, am)[0].argmax(-1)
        still = set()
        for i, (r, (p, ids)) in enumerate(zip(rows, items)):
            k = len(r)
            if top[i, k - 1: k - 1 + len(ids)].tolist() == ids:
                still.add(p)
        return still
