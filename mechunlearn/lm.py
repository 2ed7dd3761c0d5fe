"""Greedy decoding through a bridge's hooks, with a self-checked KV-cache fast path.

The scoring primitives (``model_device``, ``logits``, ``token_kl``, ``response_logprobs``) are
in :mod:`mechunlearn.lm_scores` and stay importable from here.

Two decoders give the same tokens:

* the **reference**, :func:`_greedy_full`, re-runs the whole right-padded sequence every step
  (hooks see every position, as in ``run_with_hooks``);
* the **fast path**, :func:`_greedy_cached`, left-pads internally and decodes with a KV cache,
  either on the Hugging Face model under a bridge (no hook attached) or through the bridge
  (``kv_cache=True``: hooks see only each new position; exact for edits that act on every
  position alike and for int ``positions``, which :func:`mechunlearn.apply` counts over the
  whole sequence from each pass's cache length, :func:`mechunlearn.masks.track_passes`).

Every forward pass hands its padding mask to the interventions of an enclosing
:func:`mechunlearn.apply` block (:func:`mechunlearn.masks.forward_masks`), so an edit at
``positions=-1`` lands on each row's last real token: a batched row equals that prompt
decoded alone.

The fast path proves itself (:mod:`mechunlearn.fastpath`): the first time it runs in a
process for a model class, its prefill logits and first cached step are compared with full
forward passes on the first batch; on mismatch (e.g. a ``transformers`` release whose cache
stays empty under TransformerLens's wrapping) it is switched off with one warning and the
reference path is used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechunlearn import fastpath
from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.lm_scores import (  # noqa: F401 (kept importable from mechunlearn.lm)
    logits,
    model_device,
    response_logprobs,
    token_kl,
)
from mechunlearn.masks import forward_masks
from mechunlearn.tokens import TokenBatch, context_length

CHECK_ROWS = 8  # rows of the first batch used by the fast-path self-check


@torch.no_grad()
def greedy(model: Any, batch: TokenBatch, max_new_tokens: int, eos_token_id: int | None,
           pad_token_id: int, kv_cache: bool | None = None, batch_size: int = 64,
           ) -> list[list[int]]:
    """Greedy continuations of prompts given as tokens.

    Args:
        model: a ``TransformerBridge`` or a Hugging Face causal LM.
        batch: prompts, ``input_ids``/``attention_mask`` ``[n, pos]`` (either padding side).
        max_new_tokens: at most this many new tokens per row (>= 1).
        eos_token_id: a row stops at this token (not included); ``None``: never.
        pad_token_id: id used for padding.
        kv_cache: ``None`` decodes with a KV cache only when no hook is attached (the wrapped
            Hugging Face model runs directly); ``True`` decodes with a KV cache through the
            bridge, hooks firing on each new position only (right for edits that act on every
            position alike or on int positions; not for ``"prompt"``/``"response"`` masks);
            ``False`` always re-runs the whole sequence. A fast path that
            fails its first-use self-check falls back to ``False`` with a warning.
        batch_size: rows per decoding batch.

    Returns:
        ``n`` lists of new token ids. Rows also stop at the model's context length.

    Raises:
        ConfigError: ``max_new_tokens`` or ``batch_size`` < 1.
        ShapeError: a prompt longer than the model's context.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_new_tokens and batch_size must be >= 1, got "
                          f"{max_new_tokens}, {batch_size}.")
    n_ctx = context_length(model)
    fwd, key = _fast_step(model, kv_cache)
    eos = -1 if eos_token_id is None else int(eos_token_id)
    out: list[list[int]] = []
    for s in range(0, len(batch), batch_size):
        ids, am = _right_pad(batch[s:s + batch_size], pad_token_id)
        lens = am.sum(1)
        if int(lens.max()) > n_ctx:
            i = int(lens.argmax())
            raise ShapeError(f"Prompt {s + i} has {int(lens[i])} tokens, more than the model's "
                             f"context ({n_ctx}); shorten it.")
        if fwd is not None and not fastpath.self_check(
                key, lambda f=fwd, i=ids, a=am: _check_cached(model, f, i, a, pad_token_id),
                f"KV-cache decoding ({key})"):
            fwd = None
        args = (ids, am, max_new_tokens, n_ctx, eos, pad_token_id)
        out += _greedy_full(model, *args) if fwd is None else _greedy_cached(fwd, *args)
    return out


def _right_pad(tb: TokenBatch, pad: int) -> tuple[Tensor, Tensor]:
    """Move each row's real tokens to the left (right padding), keeping order."""
    ids, am = tb.input_ids, tb.attention_mask.long()
    if not bool((am[:, :-1] < am[:, 1:]).any()):  # already right-padded
        return ids, am
    out = torch.full_like(ids, pad)
    mask = torch.zeros_like(am)
    for i in range(len(ids)):
        real = ids[i][am[i].bool()]
        out[i, :len(real)], mask[i, :len(real)] = real, 1
    return out, mask


Step = Callable[[Tensor, Tensor, Tensor, Any], tuple[Tensor, Any]]


def _fast_step(model: Any, kv_cache: bool | None) -> tuple[Step | None, str]:
    """The cached step function for this model and mode, and its self-check key."""
    if kv_cache is False:
        return None, ""
    if kv_cache is None:
        lm = plain_lm(model)
        if lm is None:
            return None, ""
        return _hf_step(lm), f"hf-kv-cache:{type(lm).__name__}"
    if hasattr(model, "hook_dict"):
        return _bridge_step(model), f"bridge-kv-cache:{type(model).__name__}"
    return _hf_step(model), f"hf-kv-cache:{type(model).__name__}"


def plain_lm(model: Any) -> Any | None:
    """The Hugging Face causal LM to generate with through a KV cache, or None.

    None when a hook is attached (to any TransformerLens HookPoint of a bridge, or to any
    submodule of a plain HF model): hooks must see the whole sequence at every step. Also
    None for a bridge in compatibility mode (its processed weights are not the wrapped
    model's) and for anything that is neither a bridge nor a HF causal LM. The bridge's own
    internal pre-hooks on the wrapped modules (TransformerLens installs them on first use)
    are not user hooks and do not count.
    """
    if hasattr(model, "hook_dict"):
        from transformer_lens.hook_points import HookPoint

        if getattr(model, "compatibility_mode", False):
            return None
        if any((m._forward_hooks or m._forward_pre_hooks) for m in model.modules()
               if isinstance(m, HookPoint)):
            return None
        lm = getattr(model, "original_model", None)
    else:
        lm = model
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return None
    if lm is None or not hasattr(lm, "config") or not hasattr(lm, "get_output_embeddings"):
        return None
    return lm


def _cache_kwarg(fn: Any) -> str:
    """``"cache"`` where the forward takes the new ``cache=`` argument, else
    ``"past_key_values"`` (transformers < 5.40 spelling)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def _hf_step(lm: Any) -> Step:
    """``(ids, mask, positions, past) -> (logits, past)`` for a HF causal LM."""
    dev = model_device(lm)
    kw = _cache_kwarg(lm.forward)

    def step(ids: Tensor, mask: Tensor, pos: Tensor, past: Any) -> tuple[Tensor, Any]:
        out = lm(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                 use_cache=True, **{kw: past})
        cache = getattr(out, "past_key_values", None)
        return out.logits, cache if cache is not None else getattr(out, "cache", None)

    return step


def _bridge_step(model: Any) -> Step:
    """Like :func:`_hf_step` but through a bridge's forward, so its hooks fire."""
    dev = model_device(model)

    def step(ids: Tensor, mask: Tensor, pos: Tensor, past: Any) -> tuple[Tensor, Any]:
        with forward_masks(mask[:, -ids.shape[1]:].to(dev)):  # the positions hooks see
            return model(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         past_key_values=past, use_cache=True, return_type="logits_and_cache")

    return step


def _left_pad(ids: Tensor, am: Tensor, pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``[b, p]`` -> left-padded ids, mask and position ids."""
    b, p = ids.shape
    lens = am.sum(1)
    left = torch.full((b, p), pad, dtype=torch.long)
    lmask = torch.zeros(b, p, dtype=torch.long)
    for i in range(b):
        n = int(lens[i])
        left[i, p - n:], lmask[i, p - n:] = ids[i, :n], 1
    return left, lmask, (lmask.cumsum(1) - 1).clamp(min=0)


def _check_cached(model: Any, fwd: Step, ids: Tensor, am: Tensor, pad: int
                  ) -> tuple[bool, float] | None:
    """Compare the cached path with full forward passes on up to :data:`CHECK_ROWS` rows:
    the prefill's last-position logits and the first cached step's logits."""
    n_ctx = context_length(model)
    keep = am.sum(1) < n_ctx  # rows with room for one more token
    if not bool(keep.any()):
        return None  # no row can grow: this batch uses the reference, a later one checks
    ids, am = ids[keep][:CHECK_ROWS], am[keep][:CHECK_ROWS]
    b = len(ids)
    lens = am.sum(1)
    left, lmask, pos = _left_pad(ids, am, pad)
    lg0, past = fwd(left, lmask, pos, None)
    nxt = lg0[:, -1].float().argmax(-1).cpu()
    lg1, _ = fwd(nxt.unsqueeze(1), torch.cat([lmask, torch.ones(b, 1, dtype=torch.long)], 1),
                 lens.unsqueeze(1), past)
    buf = torch.cat([ids, torch.full((b, 1), pad, dtype=torch.long)], 1)
    mask = torch.cat([am, torch.zeros(b, 1, dtype=torch.long)], 1)
    rows = torch.arange(b)
    buf[rows, lens], mask[rows, lens] = nxt, 1
    full = logits(model, buf, mask)
    fast = torch.stack([lg0[:, -1].float().cpu(), lg1[:, -1].float().cpu()])
    ref = torch.stack([full[rows, lens - 1], full[rows, lens]])
    return fastpath.close(fast, ref)


def _greedy_full(model: Any, ids: Tensor, am: Tensor, max_new: int, n_ctx: int, eos: int,
                 pad: int) -> list[list[int]]:
    """Greedy decoding re-running the whole (right-padded) sequence each step."""
    b, p = ids.shape
    width = min(p + max_new, n_ctx)
    buf = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    buf[:, :p], mask[:, :p] = ids, am
    lens = am.sum(1)
    done = torch.zeros(b, dtype=torch.bool)
    new: list[list[int]] = [[] for _ in range(b)]
    for _ in range(max_new):
        done |= lens >= width
        if bool(done.all()):
            break
        L = int(lens.max())
        nxt = logits(model, buf[:, :L], mask[:, :L])[torch.arange(b), lens - 1].argmax(-1)
        for i in range(b):
            if done[i]:
                continue
            t = int(nxt[i])
            if t == eos:
                done[i] = True
                continue
            buf[i, lens[i]], mask[i, lens[i]] = t, 1
            new[i].append(t)
            lens[i] += 1
    return new


def _greedy_cached(fwd: Step, ids: Tensor, am: Tensor, max_new: int, n_ctx: int, eos: int,
                   pad: int) -> list[list[int]]:
    """Greedy decoding with a KV cache (prompts left-padded internally); ``fwd`` is a
    :data:`Step`.

    Same stopping rules as :func:`_greedy_full`: a row stops at ``eos``, after ``max_new``
    tokens, or when its length reaches ``n_ctx``.
    """
    b, _ = ids.shape
    lens = am.sum(1).clone()
    left, lmask, pos = _left_pad(ids, am, pad)
    done = lens >= n_ctx
    new: list[list[int]] = [[] for _ in range(b)]
    lg, past = fwd(left, lmask, pos, None)
    for it in range(max_new):
        nxt = lg[:, -1].float().argmax(-1).cpu()
        live = ~done
        for i in torch.nonzero(live).flatten().tolist():
            t = int(nxt[i])
            if t == eos:
                done[i] = True
            else:
                new[i].append(t)
                lens[i] += 1
                done[i] = bool(lens[i] >= n_ctx)
        if bool(done.all()) or it == max_new - 1:
            break
        fed = live & ~done  # rows that appended a token this step
        lmask = torch.cat([lmask, fed.long().unsqueeze(1)], 1)
        tok_in = torch.where(fed, nxt, torch.full_like(nxt, pad)).unsqueeze(1)
        lg, past = fwd(tok_in, lmask, (lens - 1).clamp(min=0, max=n_ctx - 1).unsqueeze(1), past)
    return new
