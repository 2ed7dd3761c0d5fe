"""``diagnose`` runs the robustness checks on every variant by default (issue 20, point 4);
``robustness=False`` skips them and loads no second copy; masked LMs and an empty method list
are refused before any work. Tiny Llama from ``studies.example`` (trained for a few seconds)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mechunlearn.errors import ConfigError
from mechunlearn.studies.diagnose import DiagnoseConfig, diagnose
from mechunlearn.unlearn.loop import UnlearnConfig

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(layers=(1,), gradients=False, methods=("project", "unlearn"), n_permutations=0,
            unlearn=UnlearnConfig(steps=30, repair_steps=5, eval_every=5))
NUMERIC = ("robustness_bad_rate", "relearn_bad_rate", "int8_bad_rate")
EDIT_NUMERIC = ("ablation_project_bad_rate", "ablation_clamp_bad_rate", "recovered_last",
                "effect", "uds")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from mechunlearn.studies.example import make_example

    return make_example(tmp_path_factory.mktemp("diagrob") / "example")


@pytest.fixture(scope="module")
def tuned(example):
    from mechunlearn.models import load_bridge

    return load_bridge(example / "tuned")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_original_copy_is_separate_even_after_a_backward_pass():
    from mechunlearn.lm import logits
    from mechunlearn.models import tiny_gpt2
    from mechunlearn.studies.robustness import original_copy
    from mechunlearn.tokens import model_tokenizer, tokenize

    m = tiny_gpt2(n_layer=2, d_model=32)
    tb = tokenize(model_tokenizer(m), ["the quick", "over the lazy dog"])
    base = logits(m, tb.input_ids, tb.attention_mask)
    m(tb.input_ids).sum().backward()  # leaves non-leaf tensors that plain deepcopy refuses
    c = original_copy(m)
    ptrs = {t.data_ptr() for t in [*m.parameters(), *m.buffers()]}
    assert not any(t.data_ptr() in ptrs for t in [*c.parameters(), *c.buffers()])
    assert all(p.grad is None for p in c.parameters())
    assert torch.equal(logits(c, tb.input_ids, tb.attention_mask), base)
    with torch.no_grad():
        next(c.parameters()).add_(1.0)
    assert torch.equal(logits(m, tb.input_ids, tb.attention_mask), base)  # original untouched
    assert not torch.equal(logits(c, tb.input_ids, tb.attention_mask), base)


def test_diagnose_runs_the_checks_on_every_variant(example, tuned, tmp_path, monkeypatch):
    import mechunlearn.robustness.table as T
    from mechunlearn.lm import logits
    from mechunlearn.tokens import model_tokenizer, tokenize

    real, moved = T.quantized, []

    @contextmanager
    def spy(model, scheme="int8"):  # the quantised model's logits differ from the plain one's
        tb = tokenize(model_tokenizer(model), ["Zork asks about tea."])
        with torch.no_grad():
            plain = logits(model, tb.input_ids, tb.attention_mask)
            with real(model, scheme) as info:
                moved.append(float((logits(model, tb.input_ids, tb.attention_mask)
                                    - plain).abs().max()))
        with real(model, scheme) as info:
            yield info

    monkeypatch.setattr(T, "quantized", spy)
    res = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", judge="fool",
                   reference=example / "reference", ordinary=example / "ordinary.jsonl",
                   extra_metrics=lambda m, p, r, kv: {"mine": 1.0},
                   config=DiagnoseConfig(**FAST))
    e = res.edits.set_index("variant")
    measured = e[e.status == "measured"]
    assert list(measured.index) == ["unedited", "project", "unlearn"]
    assert (measured["mine"] == 1.0).all()  # the user's own metric composes with the checks
    for v, row in measured.iterrows():
        for c in NUMERIC + (EDIT_NUMERIC if v != "unedited" else ()):
            assert _finite(row[c]), (v, c)
    assert moved and min(moved) > 0  # every quantised rate came from a changed model
    # not a no-op: 20 relearning steps on attributed neighbours bring the projection's
    # removed behaviour back; the table's own before-rate is the chain's edit
    assert e.loc["project", "robustness_bad_rate"] <= 0.1
    assert e.loc["project", "relearn_bad_rate"] >= e.loc["project", "robustness_bad_rate"] + 0.2
    assert e.loc["unedited", "robustness_bad_rate"] >= 0.8
    assert e.loc["unlearn", "effect"] > e.loc["project", "effect"] > 0  # nats/token removed
    per = res.robustness_layers
    assert set(per.variant) >= {"project", "unlearn"} and "recovered" in per.columns
    assert res.info["robustness"]["adjacent"].startswith("the 8 training pairs")
    assert (measured.measure_seconds >= 0).all() if "measure_seconds" in e else True
    md = res.write_report(tmp_path / "rep").read_text()
    assert "## Robustness" in md and "Relearning data: the 8 training pairs" in md
    csv = pd.read_csv(tmp_path / "rep" / "data" / "robustness.csv").set_index("variant")
    assert csv.loc["project", "relearn_bad_rate"] == pytest.approx(
        e.loc["project", "relearn_bad_rate"])
    assert (tmp_path / "rep" / "data" / "robustness_layers.csv").exists()


def test_robustness_off_loads_no_copy_and_has_no_section(example, tuned, tmp_path,
                                                        monkeypatch):
    import mechunlearn.studies.robustness as R

    def refuse(model):
        raise AssertionError("original_copy called with robustness=False")

    monkeypatch.setattr(R, "original_copy", refuse)
    res = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", judge="fool",
                   config=DiagnoseConfig(**{**FAST, "methods": ("project",)},
                                         robustness=False))
    assert "relearn_bad_rate" not in res.edits.columns and res.robustness_layers is None
    assert "Robustness" not in res.write_report(tmp_path / "rep").read_text()


def test_config_and_cli_refuse_bad_settings(example, tuned, tmp_path):
    from mechunlearn.cli import app

    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="robustness must be True or False"):
            DiagnoseConfig(robustness=bad)
    with pytest.raises(ConfigError, match="robustness_adjacent"):
        DiagnoseConfig(robustness_adjacent=0)
    for bad in ((), (-1,), (True,)):
        with pytest.raises(ConfigError, match="robustness_ablation_layers"):
            DiagnoseConfig(robustness_ablation_layers=bad)
    with pytest.raises(ConfigError, match="beyond the model's 2"):  # before any work
        diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", judge="fool",
                 config=DiagnoseConfig(robustness_ablation_layers=(0, 2)))
    args = ["diagnose", "--model", str(example / "tuned"), "--train",
            str(example / "train.jsonl"), "--bad", str(example / "bad.jsonl"), "--judge", "fool",
            "--out", str(tmp_path / "rep")]
    for spec in ("", " , "):
        r = CliRunner().invoke(app, [*args, "--methods", spec])
        assert r.exit_code == 2 and "names no edit" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()
    r = CliRunner().invoke(app, ["diagnose", "--help"], env={"COLUMNS": "200"})
    assert "--no-robustness" in r.output


def test_masked_lm_is_refused_before_any_work(example, tmp_path, monkeypatch):
    from mechunlearn.cli import app
    from mechunlearn.models import load_bridge
    from mechunlearn.studies.diagnose_checks import NotCausalLMError
    from mechunlearn.tiny_models import build_tiny

    bert = build_tiny("bert", tmp_path / "bert")
    import mechunlearn.models as M

    def no_load(*a, **k):
        raise AssertionError("a masked LM folder was loaded")

    with monkeypatch.context() as mp:
        mp.setattr(M, "load_bridge", no_load)
        with pytest.raises(NotCausalLMError, match="BertForMaskedLM.*causal.*extract"):
            diagnose(bert, example / "train.jsonl", example / "bad.jsonl", judge="fool")
        r = CliRunner().invoke(app, ["diagnose", "--model", str(bert), "--train",
                                     str(example / "train.jsonl"), "--bad",
                                     str(example / "bad.jsonl"), "--judge", "fool",
                                     "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "cannot generate responses" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()
    with pytest.raises(NotCausalLMError, match="BertForMaskedLM"):  # an in-memory bridge too
        diagnose(load_bridge(bert), example / "train.jsonl", example / "bad.jsonl", judge="fool")


def test_a_failure_shared_by_every_variant_is_one_note_naming_them():
    """The demo's report repeated the same NF4 note for each of 7 variants."""
    from mechunlearn.studies.robustness import ChainChecks

    c = ChainChecks.__new__(ChainChecks)  # finish() reads only per_layer and raw_notes
    c.per_layer, c.raw_notes = [], [(0, "nf4 failed"), (1, "nf4 failed"), (1, "int8 failed"),
                                    (2, "nf4 failed")]
    rows = [{"variant": v, "robustness_seconds": 1.0} for v in ("unedited", "project", "u2a")]
    _, notes = c.finish(rows)
    assert notes == ["Robustness, unedited, project, u2a: nf4 failed",
                     "Robustness, project: int8 failed"]
