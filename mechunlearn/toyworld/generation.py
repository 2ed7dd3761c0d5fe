"""Greedy decoding for toy-world models (bridges, edited bridges, plain HF causal LMs).

Prompts are raw requests, formatted as ``User: ...\\nAssistant:`` (``toyworld.format``).
Two decoders give the same tokens: :func:`_greedy_full` re-runs the whole right-padded
sequence every step (hooks see every position, as in ``run_with_hooks``) and
:func:`_greedy_cached` left-pads internally and decodes with a KV cache, either on the HF
model under a bridge (no hook attached) or through the bridge (``kv_cache=True``: hooks see
only each new position, exact for edits that act on every position alike).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, ShapeError
from mechunlearn.toyworld.data import EvalPrompt
from mechunlearn.toyworld.format import encode_prompts


def _tok(model: Any, tokenizer: Any | None) -> Any:
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError("The model has no tokenizer; pass tokenizer= (the world's tokenizer).")
    return tok


def logits(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Logits ``[n, pos, vocab]`` of a bridge (through its hooks) or a HF causal LM."""
    dev = next(model.parameters()).device
    ids, am = input_ids.to(dev), attention_mask.to(dev)
    if hasattr(model, "hook_dict"):
        out = model(ids, attention_mask=am, return_type="logits")
    else:
        out = model(input_ids=ids, attention_mask=am).logits
    return out.float().cpu()


def _prompts(prompts: Sequence[str] | Sequence[EvalPrompt]) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError("Expected a list of prompts, got a single str.")
    if len(prompts) == 0:
        raise EmptyDataError("Got no prompts.")
    return [p.prompt if isinstance(p, EvalPrompt) else p for p in prompts]


@torch.no_grad()
def generate(model: Any, prompts: Sequence[str] | Sequence[EvalPrompt],
             max_new_tokens: int = 32, batch_size: int = 64,
             tokenizer: Any | None = None, kv_cache: bool | None = None) -> list[str]:
    """Greedy continuations of raw prompts (formatted as ``User: ...\\nAssistant:``).

    Batched and deterministic; each row stops at ``<eos>`` (not included in the output),
    at ``max_new_tokens`` or at the model's context length. Returns ``n`` strings with the
    leading space stripped.

    ``kv_cache``: ``None`` (default) decodes with a KV cache only when no hook is attached
    (the wrapped Hugging Face model runs directly: same tokens, several times faster) and
    otherwise re-runs the whole sequence every step, so hooks see every position as in
    ``run_with_hooks``. ``True`` decodes with a KV cache *through the bridge*, hooks firing
    on each new position only: correct for edits that act on every position alike (a
    projection or steering vector at all positions), wrong for position-dependent ones.
    ``False`` always re-runs the whole sequence.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_new_tokens and batch_size must be >= 1, got "
                          f"{max_new_tokens}, {batch_size}.")
    tok = _tok(model, tokenizer)
    texts = _prompts(prompts)
    n_ctx = int(getattr(getattr(model, "cfg", None), "n_ctx", 0) or
                getattr(getattr(model, "config", None), "n_positions", 1024))
    lm = _plain_lm(model) if kv_cache is None else None
    if lm is not None:
        fwd: Any = _hf_step(lm)
    elif kv_cache and hasattr(model, "hook_dict"):
        fwd = _bridge_step(model)
    elif kv_cache:
        fwd = _hf_step(model)
    else:
        fwd = None
    outs: list[str] = []
    for s in range(0, len(texts), batch_size):
        tb = encode_prompts(tok, texts[s:s + batch_size])
        lens = tb.attention_mask.sum(1)
        if int(lens.max()) > n_ctx:
            i = int(lens.argmax())
            raise ShapeError(f"Prompt {s + i} has {int(lens[i])} tokens, more than the model's "
                             f"context ({n_ctx}); shorten it.")
        args = (tb.input_ids, tb.attention_mask, max_new_tokens, n_ctx, tok.eos_token_id,
                tok.pad_token_id)
        new = _greedy_full(model, *args) if fwd is None else _greedy_cached(fwd, *args)
        outs += [tok.decode(r, skip_special_tokens=True).strip() for r in new]
    return outs


def _plain_lm(model: Any) -> Any | None:
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


Step = Callable[[Tensor, Tensor, Tensor, Any], tuple[Tensor, Any]]


def _hf_step(lm: Any) -> Step:
    """``(ids, mask, positions, past) -> (logits, past)`` for a HF causal LM."""
    dev = next(lm.parameters()).device

    def step(ids: Tensor, mask: Tensor, pos: Tensor, past: Any) -> tuple[Tensor, Any]:
        out = lm(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                 past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    return step


def _bridge_step(model: Any) -> Step:
    """Like :func:`_hf_step` but through a bridge's forward, so its hooks fire."""
    dev = next(model.parameters()).device

    def step(ids: Tensor, mask: Tensor, pos: Tensor, past: Any) -> tuple[Tensor, Any]:
        return model(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                     past_key_values=past, use_cache=True, return_type="logits_and_cache")

    return step


def _greedy_cached(fwd: Step, ids: Tensor, am: Tensor, max_new: int, n_ctx: int, eos: int,
                   pad: int) -> list[list[int]]:
    """Greedy decoding with a KV cache (prompts left-padded internally); ``fwd`` is a
    :data:`Step`.

    Same stopping rules as :func:`_greedy_full`: a row stops at ``eos``, after ``max_new``
    tokens, or when its length reaches ``n_ctx``.
    """
    b, p = ids.shape
    lens = am.sum(1)
    left = torch.full((b, p), pad, dtype=torch.long)
    lmask = torch.zeros(b, p, dtype=torch.long)
    for i in range(b):
        n = int(lens[i])
        left[i, p - n:], lmask[i, p - n:] = ids[i, :n], 1
    pos = (lmask.cumsum(1) - 1).clamp(min=0)
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
