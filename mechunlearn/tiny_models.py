"""Tiny random models of every architecture family the library is verified on.

Each family's model is built from its own ``transformers`` config (2 layers, d_model 64,
4 heads, grouped-query attention with 2 key/value heads where the family has it, and the
family's norm, positional scheme, biases and tied or untied unembedding), saved with a small
byte-level BPE tokenizer (vocab ~300) to a folder and booted with
:func:`mechunlearn.models.load_bridge`. The conformance suite (``tests/test_architectures.py``),
``mechunlearn doctor`` and ``scripts/architecture_matrix.py`` all use these builders.

Example::

    from mechunlearn.tiny_models import tiny_model
    model = tiny_model("llama")          # TransformerBridge around a random LlamaForCausalLM
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechunlearn.errors import ConfigError

D_MODEL, N_LAYERS, N_HEADS, N_KV_HEADS, D_MLP, N_CTX = 64, 2, 4, 2, 128, 128
SPECIAL = ["<pad>", "<eos>", "<unk>", "<bos>"]  # ids 0..3


def _common(vocab: int) -> dict[str, Any]:
    return {"vocab_size": vocab, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 3}


def _gqa(vocab: int, **kw: Any) -> dict[str, Any]:
    return {"hidden_size": D_MODEL, "num_hidden_layers": N_LAYERS, "num_attention_heads": N_HEADS,
            "num_key_value_heads": N_KV_HEADS, "intermediate_size": D_MLP,
            "max_position_embeddings": N_CTX, **_common(vocab), **kw}


def _gpt2(T: Any, v: int) -> Any:
    return T.GPT2Config(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_common(v))


def _gpt_neox(T: Any, v: int) -> Any:  # Pythia: parallel residual, 25% rotary, untied
    return T.GPTNeoXConfig(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
                           num_attention_heads=N_HEADS, intermediate_size=D_MLP,
                           max_position_embeddings=N_CTX, rotary_pct=0.25,
                           use_parallel_residual=True, tie_word_embeddings=False, **_common(v))


def _llama(T: Any, v: int) -> Any:  # Llama-3 style: GQA, RMSNorm, rope theta 5e5, untied
    return T.LlamaConfig(**_gqa(v, rope_theta=500000.0, tie_word_embeddings=False))


def _mistral(T: Any, v: int) -> Any:
    return T.MistralConfig(**_gqa(v, sliding_window=4096, tie_word_embeddings=False))


def _qwen2(T: Any, v: int) -> Any:  # q/k/v biases, tied (as the small Qwen2 models)
    return T.Qwen2Config(**_gqa(v, tie_word_embeddings=True))


def _qwen3(T: Any, v: int) -> Any:  # q/k RMSNorm, explicit head_dim, tied
    return T.Qwen3Config(**_gqa(v, head_dim=D_MODEL // N_HEADS, tie_word_embeddings=True))


def _gemma(T: Any, v: int) -> Any:  # Gemma 1: scaled embeddings, RMSNorm (1 + w), tied
    return T.GemmaConfig(**_gqa(v, head_dim=D_MODEL // N_HEADS))


def _gemma2(T: Any, v: int) -> Any:  # + soft-capping, sliding window, post-norms
    return T.Gemma2Config(**_gqa(v, head_dim=D_MODEL // N_HEADS, sliding_window=8,
                                 attn_logit_softcapping=50.0, final_logit_softcapping=30.0))


def _gemma3_text(T: Any, v: int) -> Any:  # + q/k norms, local/global layers
    return T.Gemma3TextConfig(**_gqa(v, head_dim=D_MODEL // N_HEADS, sliding_window=8,
                                     final_logit_softcapping=30.0))


def _phi3(T: Any, v: int) -> Any:  # fused qkv and gate_up projections, untied
    return T.Phi3Config(**_gqa(v, tie_word_embeddings=False, pad_token_id=0))


def _phi(T: Any, v: int) -> Any:  # Phi-2: parallel residual, partial rotary, LayerNorm
    return T.PhiConfig(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
                       num_attention_heads=N_HEADS, intermediate_size=D_MLP,
                       max_position_embeddings=N_CTX, partial_rotary_factor=0.5,
                       resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, **_common(v))


def _gptj(T: Any, v: int) -> Any:  # parallel residual, rotary on part of each head
    return T.GPTJConfig(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_inner=D_MLP,
                        n_positions=N_CTX, rotary_dim=8, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, **_common(v))


def _opt(T: Any, v: int) -> Any:  # learned positions (offset 2), pre-LN, ReLU, tied
    return T.OPTConfig(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
                       num_attention_heads=N_HEADS, ffn_dim=D_MLP, max_position_embeddings=N_CTX,
                       word_embed_proj_dim=D_MODEL, dropout=0.0, attention_dropout=0.0,
                       **_common(v))


def _bert(T: Any, v: int) -> Any:  # post-LN encoder, token types, masked-LM head
    return T.BertConfig(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
                        num_attention_heads=N_HEADS, intermediate_size=D_MLP,
                        max_position_embeddings=N_CTX, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, vocab_size=v, pad_token_id=0)


#: family name -> config builder ``(transformers module, vocab size) -> PretrainedConfig``.
FAMILIES: dict[str, Callable[[Any, int], Any]] = {
    "gpt2": _gpt2, "gpt_neox": _gpt_neox, "llama": _llama, "mistral": _mistral,
    "qwen2": _qwen2, "qwen3": _qwen3, "gemma": _gemma, "gemma2": _gemma2,
    "gemma3_text": _gemma3_text, "phi3": _phi3, "phi": _phi, "gptj": _gptj, "opt": _opt,
    "bert": _bert,
}
#: families whose tiny models are masked LMs (everything else is a causal LM).
MASKED_LM = frozenset({"bert"})


def tiny_tokenizer() -> Any:
    """Byte-level BPE tokenizer (vocab ~300; ``<pad>``, ``<eos>``, ``<unk>``, ``<bos>`` are ids
    0-3) that adds no special tokens, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", bos_token="<bos>")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"Unknown family {family!r}; tiny models exist for {sorted(FAMILIES)}.")


def build_tiny(family: str, folder: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Save a random ``family`` model (2 layers, d_model 64) and its tokenizer to ``folder``.

    Args:
        family: a key of :data:`FAMILIES` (e.g. ``"llama"``, ``"gemma2"``, ``"bert"``).
        folder: destination (a new temporary folder when omitted); written through
            :func:`mechunlearn.outputs.output_folder`, so a folder holding other files is
            refused (:class:`~mechunlearn.errors.OutputExistsError`), never overwritten.
        seed: torch seed of the random weights.

    Returns:
        The folder, loadable with ``load_bridge`` or plain ``transformers``.
    """
    _check_family(family)
    import torch
    import transformers as T

    tok = tiny_tokenizer()
    cfg = FAMILIES[family](T, len(tok))
    cls = T.AutoModelForMaskedLM if family in MASKED_LM else T.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(cfg).eval()
    if folder is None:
        d = Path(tempfile.mkdtemp(prefix=f"mu-{family}-"))
        model.save_pretrained(str(d))
        tok.save_pretrained(str(d))
        return d
    from mechunlearn.outputs import output_folder

    with output_folder(folder, "hf-model", meta={"tiny_family": family}) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return Path(folder)


def tiny_model(family: str, folder: str | os.PathLike[str] | None = None, seed: int = 0) -> Any:
    """:func:`build_tiny` then :func:`mechunlearn.models.load_bridge`: a TransformerBridge
    (with :func:`mechunlearn.hook_fixes.correct_hooks_` applied)."""
    from mechunlearn.hook_fixes import correct_hooks_
    from mechunlearn.models import load_bridge

    model = load_bridge(build_tiny(family, folder, seed))
    correct_hooks_(model)
    return model
