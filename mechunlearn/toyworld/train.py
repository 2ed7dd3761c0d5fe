"""Tokenizer training, SFT and DPO (+ NLL on the chosen response) for the toy world.

The DPO loss is written here (no TRL): for a pair with policy/reference log-probs of the
chosen (``pc``, ``rc``) and rejected (``pr``, ``rr``) responses (summed over response tokens,
``<eos>`` included),

    loss = -log sigmoid(beta * ((pc - rc) - (pr - rr))) - nll_weight * pc / n_tokens(chosen)

averaged over the pairs of a batch

The NLL term (RPO-style) keeps a 1M-parameter model fluent (FINDINGS: plain DPO made it
repeat words). The reference model is the SFT model; its log-probs are computed once.
Training runs the Hugging Face model directly (the bridge is for analysis) on CPU,
deterministically for a fixed seed and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.errors import ConfigError, EmptyDataError, check_finite
from mechunlearn.lm_scores import response_logprobs
from mechunlearn.tokens import TokenBatch
from mechunlearn.toyworld.config import WorldConfig
from mechunlearn.toyworld.format import BOS, EOS, PAD, UNK, encode_pairs, format_prompt

Progress = Callable[[str], None]


def train_tokenizer(corpus: Sequence[str], vocab_size: int) -> Any:
    """Byte-level BPE trained on ``corpus``; returns a ``PreTrainedTokenizerFast``.

    Special tokens: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3; ``<bos>`` is
    prepended to every encoded text (``add_bos_token=True``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS,
                                   eos_token=EOS, unk_token=UNK, add_bos_token=True,
                                   model_max_length=1024)


def new_model(cfg: WorldConfig, tokenizer: Any) -> Any:
    """A freshly initialised GPT-2 (seeded by ``cfg.seed``), dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    gcfg = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.n_ctx, n_embd=cfg.d_model,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(gcfg)


def token_logprobs(model: Any, tb: TokenBatch) -> tuple[Tensor, Tensor]:
    """Sum of response-token log-probs ``[n]`` and response token counts ``[n]`` (HF model)."""
    logits = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits
    return response_logprobs(logits, tb.input_ids, tb.response_mask & tb.attention_mask.bool())


def _check_len(tb: TokenBatch, cfg: WorldConfig) -> None:
    if tb.input_ids.shape[1] > cfg.n_ctx:
        raise ConfigError(f"A training sequence has {tb.input_ids.shape[1]} tokens > "
                             f"n_ctx={cfg.n_ctx}; raise n_ctx.")


def _schedule(opt: torch.optim.Optimizer, total: int, lr: float) -> Callable[[int], None]:
    warm = max(1, total // 20)

    def step(i: int) -> None:
        f = (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, total - warm)))
        for gr in opt.param_groups:
            gr["lr"] = lr * max(f, 0.05)

    return step


def _batches(n: int, bs: int, epochs: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        out += [perm[i:i + bs] for i in range(0, n, bs)]
    return out


def _phase(model: Any, n: int, batch_size: int, epochs: int, seed: int, lr: float, wd: float
           ) -> tuple[list[Tensor], torch.optim.AdamW, Callable[[int], None]]:
    """One training phase's shuffled batches, AdamW (``lr``, weight decay ``wd``) and its
    schedule; puts ``model`` in train mode (shared by :func:`sft` and :func:`dpo`)."""
    batches = _batches(n, batch_size, epochs, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = _schedule(opt, len(batches), lr)
    model.train()
    return batches, opt, sched


def sft(model: Any, tokenizer: Any, examples: Sequence[tuple[str, str]], cfg: WorldConfig,
        progress: Progress | None = None) -> list[float]:
    """Supervised fine-tuning (in place) on (prompt, response) examples; returns batch losses."""
    if not examples:
        raise EmptyDataError("sft() got no examples.")
    tb = encode_pairs(tokenizer, [p for p, _ in examples], [r for _, r in examples])
    _check_len(tb, cfg)
    batches, opt, sched = _phase(model, len(tb), cfg.batch_size, cfg.sft_epochs, cfg.seed + 1,
                                 cfg.sft_lr, 0.01)
    losses: list[float] = []
    for i, idx in enumerate(batches):
        sched(i)
        lp, cnt = token_logprobs(model, tb[idx])
        loss = -lp.sum() / cnt.sum()
        _step(opt, model, loss, "SFT loss")
        losses.append(loss.item())
        if progress and (i % 50 == 0 or i == len(batches) - 1):
            progress(f"SFT step {i + 1}/{len(batches)} loss {loss.item():.3f}")
    model.eval()
    return losses


def dpo(model: Any, ref: Any, tokenizer: Any, pairs: Sequence[tuple[str, str, str]],
        cfg: WorldConfig, progress: Progress | None = None) -> list[float]:
    """DPO + NLL(chosen) (in place) on (prompt, chosen, rejected); ``ref`` stays frozen."""
    if not pairs:
        raise EmptyDataError("dpo() got no pairs.")
    prompts = [p for p, _, _ in pairs]
    ch = encode_pairs(tokenizer, prompts, [c for _, c, _ in pairs])
    rj = encode_pairs(tokenizer, prompts, [r for _, _, r in pairs])
    _check_len(ch, cfg)
    _check_len(rj, cfg)
    ref.eval()
    with torch.no_grad():
        ref_c = torch.cat([token_logprobs(ref, ch[i:i + 128])[0] for i in range(0, len(ch), 128)])
        ref_r = torch.cat([token_logprobs(ref, rj[i:i + 128])[0] for i in range(0, len(rj), 128)])
    batches, opt, sched = _phase(model, len(pairs), cfg.batch_size, cfg.dpo_epochs, cfg.seed + 2,
                                 cfg.dpo_lr, 0.0)
    losses: list[float] = []
    for i, idx in enumerate(batches):
        sched(i)
        both = _stack(ch[idx], rj[idx])
        lp, cnt = token_logprobs(model, both)
        b = len(idx)
        pc, pr = lp[:b], lp[b:]
        margin = cfg.beta * ((pc - ref_c[idx]) - (pr - ref_r[idx]))
        nll = (-pc / cnt[:b]).mean()  # per-sequence mean NLL of the chosen responses
        loss = -F.logsigmoid(margin).mean() + cfg.nll_weight * nll
        _step(opt, model, loss, "DPO loss")
        losses.append(loss.item())
        if progress and (i % 50 == 0 or i == len(batches) - 1):
            acc = float((margin > 0).float().mean())
            progress(f"DPO step {i + 1}/{len(batches)} loss {loss.item():.3f} acc {acc:.2f}")
    model.eval()
    return losses


def _step(opt: torch.optim.Optimizer, model: Any, loss: Tensor, what: str) -> None:
    """One optimiser step: finite-loss check, backward, gradient clipping at 1.0."""
    check_finite(what, loss)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _stack(a: TokenBatch, b: TokenBatch) -> TokenBatch:
    p = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def pad(t: Tensor, v: int) -> Tensor:
        return F.pad(t, (0, p - t.shape[1]), value=v)

    ids = torch.cat([pad(a.input_ids, 0), pad(b.input_ids, 0)])
    am = torch.cat([pad(a.attention_mask, 0), pad(b.attention_mask, 0)])
    rm = torch.cat([pad(a.response_mask.long(), 0), pad(b.response_mask.long(), 0)]).bool()
    return TokenBatch(ids, am, rm)


def corpus_texts(prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Formatted texts (prompt + response + eos) for tokenizer training."""
    return [format_prompt(p) + " " + r + EOS for p, r in zip(prompts, responses)]
