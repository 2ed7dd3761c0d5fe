"""Selective forgetting of attributed training samples (seed 000: attribution -> correction).

Loop: find the bad responses the model still gives; attribute them to training samples
(convex decomposition or any other attributor, passed in as a callable); unlearn the union
of everything selected so far, regularised to keep the remaining training data; re-check.
With ``screen=True``, the new candidates are screened before each round's unlearning
(:func:`.hygiene.screen_forget`; off by default: it inverted on one of two measured worlds):
only pairs whose unlearning lowers the bad responses' likelihood more than the
kept data's are unlearned; attribution is imprecise and unlearning legitimate pairs breaks
ordinary answers. With ``forget_ok``, attributed rows it refuses are never unlearned (e.g. pairs
whose chosen response the judge accepts: flipping one trains the model toward its rejected
response). Stop when no bad response is left ("fixed"; with a ``forget_metric``:
when it is at or below ``config.target``, "target"), when the KL to the *original* model on retain
data exceeds ``kl_budget`` ("budget"), or after ``max_rounds``. Keeping the other training
data close to the original model is the "optimality-preserving" constraint of the seed
paper, implemented as a KL penalty (each round) and budget (across rounds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.tokens import model_tokenizer
from mechunlearn.unlearn.data import Encode, as_items, default_encode, encode_items, rows
from mechunlearn.unlearn.hygiene import screen_forget
from mechunlearn.unlearn.loop import UnlearnConfig, unlearn
from mechunlearn.unlearn.objectives import Objective, make_objective, token_kl
from mechunlearn.unlearn.reference import forward, snapshot
from mechunlearn.weights import EditHandle

FindBad = Callable[[Any], Sequence[Any]]
Attribute = Callable[[Any, Sequence[Any]], Any]


@dataclass(frozen=True)
class SelectiveResult:
    """Per-round table, the forget ids (in order of selection), why it stopped, the undo
    handle (restores the model as before the first round), total seconds, the ids the
    screening kept out of the forget set, and the attributed ids ``forget_ok`` refused."""

    handle: EditHandle = field(repr=False)
    rounds: pd.DataFrame = field(repr=False)
    forget_ids: tuple[str, ...]
    stopped: str
    seconds: float
    screened_out: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()

    def undo(self) -> None:
        """Restore the model as it was before :func:`selective_forget`."""
        self.handle.undo()


def selected_indices(attr: Any) -> list[int]:
    """Training rows from an attribution result: an object with ``indices`` (an
    ``Attribution``), a list of them, or a plain list of ints."""
    if hasattr(attr, "indices"):
        return [int(i) for i in attr.indices]
    out: list[int] = []
    for a in attr:
        if hasattr(a, "indices"):
            out.extend(int(i) for i in a.indices)
        elif isinstance(a, (int, Tensor)) and not isinstance(a, bool):
            out.append(int(a))
        else:
            raise ConfigError(f"attribute() returned {type(a).__name__}; expected Attribution "
                              "objects or training-row ints.")
    return out


def selective_forget(model: Any, train: Sequence[Any], find_bad: FindBad, attribute: Attribute,
                     objective: str | Objective = "flip", config: UnlearnConfig | None = None,
                     *, max_rounds: int = 3, kl_budget: float | None = None,
                     max_retain: int = 512, seed: int = 0, encode: Encode | None = None,
                     screen: bool = False, progress: bool = False,
                     forget_metric: Callable[[Any], float] | None = None,
                     retain_ok: Callable[[int], bool] | None = None,
                     forget_ok: Callable[[int], bool] | None = None) -> SelectiveResult:
    """Attribute -> unlearn -> re-check until the bad responses are gone.

    Args:
        train: the training preference pairs (attribution returns rows of this sequence).
        find_bad: ``find_bad(model) -> queries`` still judged bad (empty when fixed); e.g.
            ``(prompt, response)`` pairs of greedy answers on trigger prompts that are bad.
        attribute: ``attribute(model, queries) -> Attribution | [Attribution] | [row]``.
        objective, config: passed to :func:`unlearn` each round (with its ``forget_metric``
            = number of bad queries, so a round stops once they are fixed, then repairs).
        kl_budget: stop when mean KL(original || model) on the retain probe exceeds it
            (``retain_kl_orig`` per round: ``config.eval_retain`` random training rows, all
            ``max_retain`` when that is None).
        max_retain: retain sample size (random, seeded) drawn from the unselected rows.
        forget_metric: the rounds' stop metric (``<= config.target`` stops a round's forget
            phase, and, checked before each later round, the whole loop: ``stopped`` is
            ``"fixed"`` at 0, else ``"target"``); default ``len(find_bad(model))``, which
            decodes on every evaluation step, and then only an empty ``find_bad`` ends the
            loop (e.g. :class:`mechunlearn.studies.stopping.BadAnswerTracker` decodes only to
            confirm).
        retain_ok: ``retain_ok(row) -> bool``: training rows that may be retain data
            (default all unselected rows); e.g. drop pairs whose chosen response the judge
            calls bad, which would hold the bad behaviour in place.
        forget_ok: ``forget_ok(row) -> bool``: attributed training rows that may be
            unlearned (default all); refused rows are listed in ``refused``, counted per
            round (``n_refused``) and not proposed again. Attribution ranks rows by influence,
            not by badness: on the toy world's ``hard`` seed 1 the top 16 held a pair whose
            chosen answer was a correct fact, and the ``flip`` objective trains the model
            toward a forget pair's *rejected* response. Pass the complement of ``retain_ok``
            (pairs whose chosen response the judge calls bad) so a row is retain data or
            forget data, never both; the diagnose chain's ``unlearn`` edit uses the same rule.
        screen: screen new candidates with :func:`.hygiene.screen_forget` (needs
            ``find_bad`` to return ``(prompt, response)`` string pairs, tokenised as
            :func:`mechunlearn.tokenize` does; screened with the pairs' preference contrast).
    """
    if max_rounds < 1:
        raise ConfigError(f"max_rounds must be >= 1, got {max_rounds}.")
    t0 = time.perf_counter()
    items = as_items(train, "retain")
    handle = snapshot(model)
    g = torch.Generator().manual_seed(seed)
    ok = retain_ok or (lambda i: True)
    cfg = config or UnlearnConfig()
    n_probe = max_retain if cfg.eval_retain is None else min(max_retain, cfg.eval_retain)
    probe = [items[int(i)] for i in torch.randperm(len(items), generator=g)[:n_probe]]
    ref = _logprobs(model, probe, encode)
    chosen: list[int] = []
    dropped: list[int] = []
    refused: list[int] = []
    fok = forget_ok or (lambda i: True)
    obj = make_objective(objective)
    table: list[dict[str, Any]] = []
    stopped = "max_rounds"
    target = cfg.target
    try:
        for r in range(max_rounds + 1):
            if r > 0 and forget_metric is not None:
                v = float(forget_metric(model))  # the rounds' own stop metric (cheap)
                if v <= target:
                    table.append({"round": r, "forget_metric": v})
                    stopped = "fixed" if v == 0 else "target"
                    break
            bad = list(find_bad(model))
            row: dict[str, Any] = {"round": r, "n_bad": len(bad),
                                   "retain_kl_orig": _kl(model, probe, ref, encode)}
            table.append(row)
            if not bad:
                stopped = "fixed"
                break
            if kl_budget is not None and row["retain_kl_orig"] > kl_budget:
                stopped = "budget"
                break
            if r == max_rounds:
                break
            new = list(dict.fromkeys(i for i in selected_indices(attribute(model, bad))
                                     if i not in chosen and i not in dropped
                                     and i not in refused))
            no = [i for i in new if not fok(i)]
            if no:
                refused.extend(no)
                new = [i for i in new if i not in set(no)]
            row["n_refused"] = len(no)
            if not new:
                stopped = "no_new_samples"
                break
            sel = set(chosen) | set(new)
            rest = [i for i in torch.randperm(len(items), generator=g).tolist()
                    if i not in sel and ok(i)]
            n_new = len(new)
            if screen:
                new, out = _screen(model, train, new, bad, [items[i] for i in rest[:max_retain]],
                                   encode)
                dropped.extend(out)
                row["n_screened_out"] = len(out)
                if not new:
                    stopped = "screened_out"
                    break
            chosen.extend(new)
            sel = set(chosen)
            forget = [train[i] for i in chosen]
            rest = [i for i in torch.randperm(len(items), generator=g).tolist()
                    if i not in sel and ok(i)]
            retain = [items[i] for i in rest[:max_retain]]
            res = unlearn(model, forget, retain, obj, config,
                          forget_metric=forget_metric or (lambda m: float(len(find_bad(m)))),
                          encode=encode, progress=progress)
            row.update(n_new=n_new, n_forget=len(chosen), steps=res.steps,
                       round_stopped=res.stopped, seconds=time.perf_counter() - t0)
    except BaseException:
        handle.undo()
        raise
    ids = tuple(items[i].id for i in chosen)
    return SelectiveResult(handle, pd.DataFrame(table), ids, stopped, time.perf_counter() - t0,
                           tuple(items[i].id for i in dropped), tuple(items[i].id for i in refused))


def _screen(model: Any, train: Sequence[Any], new: list[int], bad: list[Any], keep: list[Any],
            encode: Encode | None) -> tuple[list[int], list[int]]:
    """(kept, dropped) rows of ``new`` by :func:`screen_forget` against the bad queries."""
    if not all(isinstance(q, (tuple, list)) and len(q) == 2 and all(isinstance(s, str) for s in q)
               for q in bad):
        raise ConfigError("selective_forget(screen=True) needs find_bad to return (prompt, "
                          "response) string pairs; pass screen=False for other query types.")
    tok = model_tokenizer(model)
    bad_tb = default_encode(tok, [q[0] for q in bad], [q[1] for q in bad])
    try:
        res = screen_forget(model, [train[i] for i in new], bad_tb, keep, encode=encode)
    except EmptyDataError:
        return [], new
    kept = [new[j] for j in res.selected]
    return kept, [i for i in new if i not in set(kept)]


@torch.no_grad()
def _logprobs(model: Any, items: list[Any], encode: Encode | None) -> list[Tensor]:
    tb = encode_items(model_tokenizer(model), items, encode)
    out: list[Tensor] = []
    for s in range(0, len(items), 64):
        ids, am, _ = rows(tb, torch.arange(s, min(s + 64, len(items))))
        out.extend(torch.log_softmax(forward(model, ids, am)[0].float(), -1).unbind(0))
    return out


@torch.no_grad()
def _kl(model: Any, items: list[Any], ref: list[Tensor], encode: Encode | None) -> float:
    tb = encode_items(model_tokenizer(model), items, encode)
    kls = []
    for s in range(0, len(items), 64):
        idx = torch.arange(s, min(s + 64, len(items)))
        ids, am, _ = rows(tb, idx)
        pos = ids.shape[1]
        r = torch.zeros(len(idx), pos, ref[0].shape[-1])
        for j, i in enumerate(idx.tolist()):
            r[j, : min(pos, ref[i].shape[0])] = ref[i][:pos]
        kls.append(token_kl(r, forward(model, ids, am)[0], am.bool()))
    return float(torch.cat(kls).mean())
