"""Relearning attack: does an edit hold when someone fine-tunes the model a little?

Unlearning that only hides a behaviour comes back after a few fine-tuning steps on a handful
of related samples ("relearning attacks", e.g. Hu et al., "Unlearning or Obfuscating?
Jogging the Memory of Unlearned LLMs via Benign Relearning", arXiv:2406.13356; Łucki et
al., "An Adversarial Perspective on Machine Unlearning for AI Safety", arXiv:2409.18025).
:func:`relearn_attack` fine-tunes a model with the language-modelling loss on the attack
data for ``steps`` Adam steps, records a behaviour metric along the way and restores the
weights bit for bit. :func:`relearn_edit` does the same for an
:class:`~mechunlearn.robustness.edit.Edit`: a run-time edit keeps its hooks on while the
model is fine-tuned (the attacker fine-tunes the deployed, intervened model). Run the same
attack on a model that never learned the behaviour (e.g. one retrained without it) to read
the result: an edit holds when the metric after the attack is no higher than that model's.

(Moved here from ``mechunlearn.unlearn.attack``, which stays a deprecated alias for one
release.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from mechunlearn.errors import ConfigError
from mechunlearn.lm import response_logprobs
from mechunlearn.tokens import model_tokenizer

if TYPE_CHECKING:
    from mechunlearn.robustness.edit import Edit
    from mechunlearn.unlearn.data import Encode

__all__ = ["RelearnResult", "relearn_attack", "relearn_edit"]


@dataclass(frozen=True)
class RelearnResult:
    """The metric ``before`` and ``after`` the attack, the ``curve`` (DataFrame: ``step``,
    ``metric``, ``loss``) and seconds; the model is restored on return."""

    before: float
    after: float
    curve: pd.DataFrame = field(repr=False)
    seconds: float


def relearn_attack(model: Any, data: Sequence[Any], metric: Callable[[Any], float], *,
                   steps: int = 20, lr: float = 3e-4, batch_size: int = 4,
                   eval_every: int | None = None, seed: int = 0,
                   encode: Encode | None = None) -> RelearnResult:
    """Fine-tune ``model`` on ``data`` (NLL of the responses), measure, restore.

    Args:
        model: a TransformerBridge (edited in place during the attack, restored after; hooks
            already on it, e.g. an enclosing :func:`mechunlearn.apply`, stay on).
        data: attack samples, ``(prompt, response)`` or preference pairs (``chosen`` is
            learned); e.g. a few forget-adjacent samples, not the forget set itself.
        metric: ``metric(model) -> float``, e.g. the bad-response rate on held-out prompts.
        steps, lr, batch_size, seed: the attack's Adam steps (batches drawn with replacement).
        eval_every: also measure every this many steps (default: only before and after).
        encode: as in :func:`mechunlearn.unlearn.unlearn`.

    Raises:
        ConfigError: ``steps``/``batch_size`` < 1, ``lr`` <= 0 or ``eval_every`` < 1.
        EmptyDataError: empty ``data`` or empty responses.
    """
    # lazy: mechunlearn.unlearn re-exports this module through its deprecated alias
    from mechunlearn.unlearn.data import as_items, encode_items, rows
    from mechunlearn.weights import snapshot

    if steps < 1 or batch_size < 1 or not lr > 0 or (eval_every is not None and eval_every < 1):
        raise ConfigError(f"relearn_attack needs steps >= 1, batch_size >= 1, lr > 0 and "
                          f"eval_every >= 1; got {steps}, {batch_size}, {lr}, {eval_every}.")
    t0 = time.perf_counter()
    items = as_items(data, "attack")
    tb = encode_items(model_tokenizer(model), items, encode)
    handle = snapshot(model)
    params = [p for p, _ in handle.saved if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    curve = [{"step": 0, "metric": float(metric(model)), "loss": float("nan")}]
    try:
        for step in range(1, steps + 1):
            idx = torch.randint(len(items), (batch_size,), generator=g)
            ids, am, m = rows(tb, idx)
            lp, nt = response_logprobs(model(ids, attention_mask=am), ids, m)
            loss = -(lp / nt.clamp_min(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step == steps or (eval_every is not None and step % eval_every == 0):
                curve.append({"step": step, "metric": float(metric(model)),
                              "loss": float(loss.detach())})
    finally:
        handle.undo()
        model.zero_grad(set_to_none=True)
    df = pd.DataFrame(curve)
    return RelearnResult(float(df.metric.iloc[0]), float(df.metric.iloc[-1]), df,
                         time.perf_counter() - t0)


def relearn_edit(edit: Edit, data: Sequence[Any], metric: Callable[[Any], float],
                 **kwargs: Any) -> RelearnResult:
    """:func:`relearn_attack` on ``edit.model`` with the edit's interventions applied during
    the whole attack (fine-tuning and measurement); ``kwargs`` as there. The model's weights
    are restored on return."""
    with edit.active() as model:
        return relearn_attack(model, data, metric, **kwargs)
