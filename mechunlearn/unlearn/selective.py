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
response). A caller that has already attributed the bad responses (the diagnose chain's
attribution sweep) passes that as ``first_attribution`` and round 0 does not attribute again;
``retain_rows`` fixes which training rows are retain data (e.g. the same sample as a plain
:func:`unlearn` edit, so the first round is that edit). Stop when no bad response is left
("fixed"; with a ``forget_metric``:
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
from mechunlearn.unlearn.data import Encode, as_items, default_encode
from mechunlearn.unlearn.hygiene import screen_forget
from mechunlearn.unlearn.loop import UnlearnConfig, unlearn
from mechunlearn.unlearn.objectives import Objective, make_objective
from mechunlearn.unlearn.reference import snapshot
from mechunlearn.unlearn.retain_probe import OriginalKL
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
                     forget_ok: Callable[[int], bool] | None = None,
                     first_attribution: Any = None,
                     retain_rows: Sequence[int] | None = None) -> SelectiveResult:
    """Attribute -> unlearn -> re-check until the bad responses are gone.

    Args:
        train: the training preference pairs (attribution returns rows of this sequence).
        find_bad: ``find_bad(model) -> queries`` still judged bad (empty when fixed); e.g.
            ``(prompt, response)`` pairs of greedy answers on trigger prompts that are bad.
        attribute: ``attribute(model, queries) -> Attribution | [Attribution] | [row]``.
        objective, config: passed to :func:`unlearn` each round (with its ``forget_metric``
            = number of bad queries, so a round stops once they are fixed, then repairs).
        kl_budget: stop when mean KL(original || model) on the retain probe exceeds it
            (``retain_kl_orig`` per round, nats per token: ``config.eval_retain`` random
            training rows, all ``max_retain`` when that is None; 0 in round 0, where the model
            is the original; the original's log-probs are computed at the first round that
            needs them, from the undo snapshot's weights, swapped in for that one forward pass
            and swapped back bit for bit: a run that stops after one round never pays for them).
        max_retain: retain sample size drawn from the unselected rows (random, seeded, or the
            first of ``retain_rows``).
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
        first_attribution: the first round's attribution when the caller already has it,
            i.e. what ``attribute(model, find_bad(model))`` returns on the unedited model (an
            ``Attribution`` whose ``indices`` / ``ids`` are rows / ids of ``train``, a list
            of them, or training-row ints, best first); round 0 then calls neither
            ``attribute`` nor ``find_bad`` (the caller found bad responses to attribute; its
            ``n_bad`` is NaN; with ``screen`` ``find_bad`` runs, the screening needs the
            queries). ``forget_ok`` still applies. Raises :class:`ConfigError` for another
            type, a row outside ``train``, or an ``Attribution`` id that differs from the id
            of ``train`` at that row (an attribution of another training set), before any
            weight changes.
        retain_rows: training rows retain data is drawn from, in this order (default: a
            seeded random order of all rows); each round uses the first ``max_retain`` that
            are neither selected for forgetting nor refused by ``retain_ok``. Pass the retain
            sample of a plain :func:`unlearn` edit of the same forget set (the diagnose
            chain's ``unlearn`` variant) and the first round is that edit, so what
            ``selective_forget`` adds (its later rounds) is compared with the same data.
            Raises :class:`ConfigError` for a row outside ``train``.
        screen: screen new candidates with :func:`.hygiene.screen_forget` (needs
            ``find_bad`` to return ``(prompt, response)`` string pairs, tokenised as
            :func:`mechunlearn.tokenize` does; screened with the pairs' preference contrast).
    """
    if max_rounds < 1:
        raise ConfigError(f"max_rounds must be >= 1, got {max_rounds}.")
    t0 = time.perf_counter()
    items = as_items(train, "retain")
    first = None if first_attribution is None else _first_rows(first_attribution, items)
    if retain_rows is not None:
        retain_rows = [int(i) for i in retain_rows]
        if any(not 0 <= i < len(items) for i in retain_rows):
            raise ConfigError(f"retain_rows must be rows of train (0..{len(items) - 1}); got "
                              f"{[i for i in retain_rows if not 0 <= i < len(items)][:5]}.")
    handle = snapshot(model)
    g = torch.Generator().manual_seed(seed)
    ok = retain_ok or (lambda i: True)
    cfg = config or UnlearnConfig()
    n_probe = max_retain if cfg.eval_retain is None else min(max_retain, cfg.eval_retain)
    probe = [items[int(i)] for i in torch.randperm(len(items), generator=g)[:n_probe]]
    kl_orig = OriginalKL(handle, probe, encode)  # the original's log-probs at first need

    def order() -> list[int]:  # candidate retain rows, in order
        return (list(retain_rows) if retain_rows is not None
                else torch.randperm(len(items), generator=g).tolist())

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
            given = r == 0 and first is not None  # stands for find_bad too (not screening)
            bad = None if given and not screen else list(find_bad(model))
            row: dict[str, Any] = {"round": r,
                                   "n_bad": float("nan") if bad is None else len(bad),
                                   "retain_kl_orig": 0.0 if r == 0 else kl_orig(model)}
            table.append(row)
            if bad is not None and not bad:
                stopped = "fixed"
                break
            if kl_budget is not None and row["retain_kl_orig"] > kl_budget:
                stopped = "budget"
                break
            if r == max_rounds:
                break
            att = first if given else selected_indices(attribute(model, bad))
            new = list(dict.fromkeys(i for i in att if i not in chosen and i not in dropped
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
            rest = [i for i in order() if i not in sel and ok(i)]
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
            rest = [i for i in order() if i not in sel and ok(i)]
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


def _first_rows(first: Any, items: list[Any]) -> list[int]:
    """Training rows of ``first_attribution``, checked against ``train`` (see
    :func:`selective_forget`)."""
    n = len(items)
    try:
        out = selected_indices(first)
    except (ConfigError, TypeError):
        raise ConfigError(f"first_attribution must be an Attribution, a list of them, or "
                          f"training-row ints; got {first!r:.80}.") from None
    wrong = [i for i in out if not 0 <= i < n]
    if wrong:
        raise ConfigError(f"first_attribution has rows {wrong[:5]} outside train (0..{n - 1}); "
                          "pass rows of the training set selective_forget receives.")
    atts = [first] if hasattr(first, "indices") else [a for a in first if hasattr(a, "indices")]
    for a in atts:
        for i, sid in zip(a.indices, getattr(a, "ids", None) or ()):
            if items[int(i)].id != sid:
                raise ConfigError(
                    f"first_attribution does not match train: row {int(i)} is {sid!r} in the "
                    f"attribution but {items[int(i)].id!r} in train. Attribute the same "
                    "training set, in the same order, that selective_forget receives.")
    return out


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
