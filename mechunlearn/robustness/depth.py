"""Depth: which layers carry an edit's effect (activation patching, edited -> original).

For each block ``l``, the original model is run on (forget prompt, bad response) pairs with
its residual stream after block ``l`` (``blocks.l.hook_resid_post``, every position) replaced
by the edited model's (:class:`~mechunlearn.interventions.Patch`); the mean per-token
log-probability of the bad responses is compared with the original's and the edited model's:

    recovered(l) = (lp_original − lp_patched(l)) / (lp_original − lp_edited)

0 means nothing of the edit is present in the residual stream after block ``l``; 1 means all
of it is (the later blocks and the unembedding add nothing). Patching after the last block
reproduces the edited output whenever the edit leaves the final norm and unembedding alone
(run-time edits, orthogonalisation); an unlearned model whose unembedding changed shows a
last-layer value below 1. ``depth`` is the first block with ``recovered >= 0.5``.

With a ``reference`` model that never learned the behaviour (e.g. retrained without it), the
Unlearning Depth Score of Lee, Kim and Jo ("Measuring the Depth of LLM Unlearning via
Activation Patching", arXiv:2605.24614) is computed in its two-stage form: stage 1 patches the
reference into the original (``drop_ref(l)``: how much of the behaviour layer ``l`` carries),
stage 2 the edit (``drop(l)``), both counted in the direction of the reference's own
effect; over the layers where ``drop_ref(l)`` is at least ``tau``
times its maximum, ``UDS = Σ drop_ref(l)·clip(drop(l)/drop_ref(l), 0, 1) / Σ drop_ref(l)``
(0: the behaviour is intact inside the model, 1: erased as deeply as in the reference). Unlike
the paper we patch the whole residual stream at every position and score the judged-bad
responses' log-probability instead of an entity span.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.errors import ConfigError
from mechunlearn.hooks import add_hooks
from mechunlearn.interventions import Patch, apply
from mechunlearn.lm import response_logprobs
from mechunlearn.masks import forward_masks
from mechunlearn.robustness.edit import Edit
from mechunlearn.sites import Site
from mechunlearn.tokens import TokenBatch


def _batches(tb: TokenBatch, size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    if tb.response_mask is None:
        raise ConfigError("depth needs (prompt, response) pairs: a TokenBatch with "
                          "response_mask.")
    out = []
    for s in range(0, len(tb), size):
        am = tb.attention_mask[s:s + size]
        out.append((tb.input_ids[s:s + size], am,
                    tb.response_mask[s:s + size].bool() & am.bool()))
    return out


@torch.no_grad()
def _logp(model: Any, ids: Tensor, am: Tensor, mask: Tensor) -> Tensor:
    """Mean per-token log-prob of the masked tokens, per row ``[b]``."""
    with forward_masks(am):
        lg = model(ids, attention_mask=am, return_type="logits")
    lp, nt = response_logprobs(lg, ids, mask)
    return lp / nt.clamp_min(1)


@torch.no_grad()
def _capture(model: Any, names: list[str], ids: Tensor, am: Tensor) -> dict[str, Tensor]:
    box: dict[str, Tensor] = {}

    def keep(name: str):
        return lambda a: box.__setitem__(name, a.detach().clone())

    h = add_hooks(model, [(n, keep(n)) for n in names])
    try:
        with forward_masks(am):
            model(ids, attention_mask=am, return_type="logits")
    finally:
        h.remove()
    return box


def _drops(original: Any, edit: Edit, batches: list, layers: list[int]
           ) -> tuple[float, float, dict[int, float]]:
    """lp_original, lp_edited and lp_patched(l) for each layer (means over rows)."""
    names = [f"blocks.{v}.hook_resid_post" for v in layers]
    lo, le, lpat = [], [], {v: [] for v in layers}
    for ids, am, m in batches:
        lo.append(_logp(original, ids, am, m))
        with edit.active() as em:
            le.append(_logp(em, ids, am, m))
            acts = _capture(em, names, ids, am)
        for v, name in zip(layers, names):
            with apply(original, Patch(acts[name], site=Site(name), positions="all")):
                lpat[v].append(_logp(original, ids, am, m))
    mean = lambda xs: float(torch.cat(xs).mean())  # noqa: E731
    return mean(lo), mean(le), {v: mean(x) for v, x in lpat.items()}


def patch_depth(original: Any, edit: Edit, pairs: TokenBatch, layers: list[int] | None = None,
                reference: Edit | None = None, tau: float = 0.1, batch_size: int = 16,
                min_effect: float = 1e-3) -> tuple[pd.DataFrame, dict[str, float]]:
    """Layer-by-layer patching of ``edit`` into ``original`` (see the module docstring).

    Args:
        original: the unedited model; edit: the edit.
        pairs: (forget prompt, bad response) pairs with ``response_mask`` (e.g. the original
            model's judged-bad greedy responses).
        layers: blocks to patch (default all); reference: a model that never learned the
            behaviour (enables UDS); tau: UDS's layer filter; batch_size: rows per pass.
        min_effect: below this total effect (nats/token) ``recovered`` and ``depth`` are NaN.

    Returns:
        ``(per_layer, summary)``: ``per_layer`` columns ``layer, lp_patched, drop,
        recovered`` (+ ``drop_ref, erased`` with a reference); ``summary`` has ``lp_original,
        lp_edited, effect`` (= lp_original − lp_edited, nats/token), ``depth``,
        ``recovered_last`` and ``uds`` (NaN without a reference).

    Raises:
        ConfigError: pairs without response mask, ``tau`` outside [0, 1) or bad layers.
    """
    n = int(original.cfg.n_layers)
    layers = list(range(n)) if layers is None else [int(v) for v in layers]
    if not layers or any(not 0 <= v < n for v in layers):
        raise ConfigError(f"layers must be blocks 0..{n - 1}, got {layers}.")
    if not 0 <= tau < 1:
        raise ConfigError(f"tau must be in [0, 1), got {tau}.")
    batches = _batches(pairs, batch_size)
    lo, le, lp = _drops(original, edit, batches, layers)
    effect = lo - le
    df = pd.DataFrame({"layer": layers, "lp_patched": [lp[v] for v in layers]})
    df["drop"] = lo - df["lp_patched"]
    ok = abs(effect) >= min_effect
    df["recovered"] = df["drop"] / effect if ok else float("nan")
    hit = df[df.recovered >= 0.5].layer
    summary = {"lp_original": lo, "lp_edited": le, "effect": effect,
               "depth": float(hit.iloc[0]) if ok and len(hit) else float("nan"),
               "recovered_last": float(df.recovered.iloc[-1]), "uds": float("nan")}
    if reference is not None:
        _, lref, lr = _drops(original, reference, batches, layers)
        sign = 1.0 if lo - lref >= 0 else -1.0  # drops counted in the reference's direction
        df["drop_ref"] = [sign * (lo - lr[v]) for v in layers]
        keep = (df.drop_ref >= tau * df.drop_ref.max()) & (df.drop_ref > 0)
        df["erased"] = (sign * df["drop"] / df["drop_ref"]).clip(0, 1).where(df.drop_ref > 0)
        if keep.any():
            w = df.drop_ref[keep]
            summary["uds"] = float((w * df.erased[keep]).sum() / w.sum())
    return df, summary


__all__ = ["patch_depth"]
