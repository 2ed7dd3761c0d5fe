"""The robustness checks on a tiny random GPT-2: each must change what it claims to change."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from _unlearn_helpers import avg_logp, same, state

from mechunlearn.errors import ConfigError, EmptyDataError, JudgeError
from mechunlearn.interventions import Project
from mechunlearn.lm import logits
from mechunlearn.robustness import (
    Edit,
    ablation_attack,
    edit_directions,
    patch_depth,
    quantized,
    relearn_attack,
    relearn_edit,
    robustness_table,
)
from mechunlearn.sites import Site
from mechunlearn.tokens import model_tokenizer, tokenize

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["the quick", "the lazy dog", "over the", "brown fox jumps", "the dog", "quick fox"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two separately loaded copies of the same random 2-layer GPT-2 (d=32)."""
    from mechunlearn.models import tiny_gpt2

    a = tiny_gpt2(n_layer=2, d_model=32, folder=tmp_path_factory.mktemp("orig"))
    b = tiny_gpt2(n_layer=2, d_model=32, folder=tmp_path_factory.mktemp("copy"))
    return a, b


def _prompts(m):
    return tokenize(model_tokenizer(m), PROMPTS)


def _mean_dir(m, layer):
    """Unit mean of the last-token residual after ``layer``: a direction with a large
    coordinate, so projecting it out changes the output."""
    from mechunlearn.features import extract

    f = extract(m, _prompts(m), Site(f"blocks.{layer}.hook_resid_post", position="last"),
                progress=False)
    v = f.values.mean(0)
    return v / v.norm()


def _project(m, layer):
    return Project(_mean_dir(m, layer), site=Site(f"blocks.{layer}.hook_resid_post"))


def _metric(m):
    return avg_logp(m, "the quick", " brown fox")


def test_int8_changes_weights_keeps_logits_close_and_restores(pair):
    m = pair[0]
    tb = _prompts(m)
    s, a = state(m), logits(m, tb.input_ids, tb.attention_mask)
    with quantized(m, "int8") as info:
        b = logits(m, tb.input_ids, tb.attention_mask)
    assert info["max_weight_change"] > 0 and info["n_layers"] >= 8
    assert (a - b).abs().max() > 0  # the quantised layers really ran
    kl = (a.log_softmax(-1).exp() * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1).mean()
    assert kl < 0.01
    assert same(m, s) and torch.equal(logits(m, tb.input_ids, tb.attention_mask), a)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes (optional) not installed")
def test_nf4_rounds_every_weight_storage_once_and_restores(pair):
    m = pair[0]
    tb = _prompts(m)
    s, a = state(m), logits(m, tb.input_ids, tb.attention_mask)
    with quantized(m, "nf4") as info:
        b = logits(m, tb.input_ids, tb.attention_mask)
    assert info["max_weight_change"] > 0 and (a - b).abs().max() > 0
    assert same(m, s)  # split q/k/v views of the fused weight restored too
    with pytest.raises(ConfigError, match="scheme"):
        with quantized(m, "int3"):
            pass


def test_ablating_the_edits_own_direction_undoes_a_steer(pair):
    from mechunlearn.interventions import Steer

    m = pair[0]
    u = torch.randn(32, generator=torch.Generator().manual_seed(0))
    u = u / u.norm()  # a random direction: the original's coordinates along it are small
    edit = Edit.runtime(m, Steer(u, alpha=8.0, site=Site("blocks.0.hook_resid_post")))
    d = edit_directions(m, edit, _prompts(m), [0, 1])
    assert abs(float(d[0]["direction"].direction @ u)) > 0.99  # the attack finds the edit
    m0 = _metric(m)
    with edit.active():
        m1 = _metric(m)
    assert abs(m1 - m0) > 0.02
    df = ablation_attack(m, edit, _prompts(m), _metric, layers=[0]).set_index("layer")
    for mode in ("clamp", "project"):
        assert abs(df.loc["0", f"{mode}_bad_rate"] - m0) < 0.2 * abs(m1 - m0), mode
    assert list(df.index) == ["0", "all"]
    with pytest.raises(ConfigError, match="modes"):
        ablation_attack(m, edit, _prompts(m), _metric, modes=("zero",))


def test_clamp_moves_a_projected_out_direction_back_project_cannot(pair):
    m = pair[0]
    edit = Edit.runtime(m, _project(m, 0))
    u = edit.interventions[0].basis[0]
    d = edit_directions(m, edit, _prompts(m), [0])
    assert abs(float(d[0]["direction"].direction @ u)) > 0.99
    m0 = _metric(m)
    with edit.active():
        m1 = _metric(m)
    at0 = ablation_attack(m, edit, _prompts(m), _metric, layers=[0]).set_index("layer").loc["0"]
    # clamping restores the original's mean coordinate (not each token's): part of the effect
    assert (m1 - at0.clamp_bad_rate) / (m1 - m0) > 0.1
    assert abs(at0.project_bad_rate - m1) < 1e-4  # a projection is idempotent


def test_patching_every_layer_reproduces_the_edit_and_locates_it(pair):
    m = pair[0]
    pairs = tokenize(model_tokenizer(m), [(p, " brown fox") for p in PROMPTS])
    edit = Edit.runtime(m, _project(m, 1))
    df, s = patch_depth(m, edit, pairs)
    assert abs(s["effect"]) > 0.01
    assert abs(df.recovered.iloc[1] - 1) < 1e-4  # after the edited layer: all of it
    assert abs(df.recovered.iloc[0]) < 1e-4  # before it: nothing
    assert s["depth"] == 1 and s["recovered_last"] == pytest.approx(1, abs=1e-4)
    _, s2 = patch_depth(m, edit, pairs, reference=edit)
    assert s2["uds"] == pytest.approx(1, abs=1e-4)  # as deep as the reference itself


def test_weight_edit_depth_and_relearn_restore(pair):
    from mechunlearn.weights import orthogonalize_

    m, c = pair
    d = _mean_dir(m, 0)
    h = orthogonalize_(c, d)
    try:
        pairs = tokenize(model_tokenizer(m), [(p, " brown fox") for p in PROMPTS])
        df, s = patch_depth(m, Edit.weights(c), pairs)
        assert abs(s["effect"]) > 0.01
        assert s["recovered_last"] == pytest.approx(1, abs=1e-3)  # unembedding untouched
        before = state(c)
        r = relearn_edit(Edit.weights(c), [("the quick", " brown fox")], _metric, steps=4,
                         lr=1e-2)
        assert r.after > r.before + 0.3 and same(c, before)
    finally:
        h.undo()


def test_relearn_keeps_runtime_hooks_on(pair):
    m = pair[0]
    edit = Edit.runtime(m, _project(m, 0))
    data = [("the quick", " brown fox")]
    s = state(m)
    r_edit = relearn_edit(edit, data, _metric, steps=3, lr=1e-2)
    r_plain = relearn_attack(m, data, _metric, steps=3, lr=1e-2)
    assert r_edit.before != pytest.approx(r_plain.before)  # measured with the edit on
    assert r_edit.curve.loss.iloc[-1] != pytest.approx(r_plain.curve.loss.iloc[-1])
    assert same(m, s)


def test_relearn_attack_raises_the_metric_and_restores(pair):
    m = pair[0]
    before = state(m)
    r = relearn_attack(m, [("the quick", " brown fox")], _metric, steps=5, lr=1e-2,
                       eval_every=2)
    assert r.after > r.before + 0.5
    assert list(r.curve.step) == [0, 2, 4, 5]
    assert same(m, before)
    with pytest.raises(ConfigError, match="steps"):
        relearn_attack(m, [("a", " b")], _metric, steps=0)


def test_old_attack_path_is_the_same_function():
    from mechunlearn.unlearn.attack import relearn_attack as old

    assert old is relearn_attack


def test_table_rows_columns_and_restores(pair):
    m, c = pair
    s = state(m)
    edits = {"project": Edit.runtime(m, _project(m, 0)), "copy": Edit.weights(c, True)}
    judge = lambda r: "the" in r  # noqa: E731
    df = robustness_table(m, edits, PROMPTS[:3], [("the quick", " brown fox")], judge,
                          reference="copy", relearn_steps=2, schemes=("int8",),
                          modes=("clamp",), max_new_tokens=4)
    assert list(df.variant) == ["unedited", "project", "copy"]
    for col in ("bad_rate", "relearn_bad_rate", "int8_bad_rate", "ablation_clamp_bad_rate"):
        assert df[col].between(0, 1).all() or col.startswith("ablation")
    assert set(df.attrs["per_layer"].variant) == {"project", "copy"}
    assert same(m, s)


def test_table_refuses_bad_inputs(pair, monkeypatch):
    m, c = pair
    ok = {"p": Edit.runtime(m, _project(m, 0))}
    base = logits(m, _prompts(m).input_ids, _prompts(m).attention_mask)
    data = [("the quick", " brown fox")]
    judge = lambda r: False  # noqa: E731
    with pytest.raises(ConfigError, match="original model itself"):
        robustness_table(m, {"x": Edit.weights(m)}, PROMPTS, data, judge)
    with pytest.raises(ConfigError, match="reference"):
        robustness_table(m, ok, PROMPTS, data, judge, reference="gold")
    with pytest.raises(EmptyDataError, match="adjacent"):
        robustness_table(m, ok, PROMPTS, [], judge)
    with pytest.raises(EmptyDataError, match="forget_prompts"):
        robustness_table(m, ok, [], data, judge)
    with pytest.raises(ConfigError, match="Unknown"):
        robustness_table(m, ok, PROMPTS, data, judge, schemes=("int2",))
    with pytest.raises(ConfigError, match="modes"):
        robustness_table(m, ok, PROMPTS, data, judge, modes=())
    monkeypatch.setattr("mechunlearn.robustness.table.has_bitsandbytes", lambda: False)
    with pytest.raises(ConfigError, match="bitsandbytes"):
        robustness_table(m, ok, PROMPTS, data, judge, schemes=("int8", "nf4"))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="Interventions"):
        Edit.runtime(m, "project")
    with pytest.raises(JudgeError, match="bool"):
        robustness_table(m, ok, PROMPTS[:2], data, lambda r: "yes", relearn_steps=1,
                         max_new_tokens=2)
    tb = _prompts(m)
    assert torch.equal(logits(m, tb.input_ids, tb.attention_mask), base)  # no hook leaked


def test_diagnose_report_has_a_robustness_section_only_with_the_columns():
    from types import SimpleNamespace

    import pandas as pd

    from mechunlearn.report import Report
    from mechunlearn.studies.diagnose_report import _robustness

    edits = pd.DataFrame({"variant": ["unedited", "project"], "bad_rate_heldout": [0.9, 0.4],
                          "relearn_bad_rate": [0.9, 0.8], "int8_bad_rate": [0.9, 0.4]})
    rep = Report("t")
    _robustness(rep, SimpleNamespace(edits=edits, info={"config": {}}))
    kinds = [k for k, _ in rep.parts]
    assert kinds == ["text", "text", "table"] and "Robustness" in rep.parts[0][1]
    name, df = rep.parts[2][1][:2]
    assert name == "robustness" and list(df.relearn_bad_rate) == [0.9, 0.8]
    bare = Report("t")
    _robustness(bare, SimpleNamespace(edits=edits[["variant", "bad_rate_heldout"]],
                                      info={"config": {"robustness": True}}))
    assert len(bare.parts) == 1 and "Requested" in bare.parts[0][1]
    none = Report("t")
    _robustness(none, SimpleNamespace(edits=edits[["variant"]], info={"config": {}}))
    assert none.parts == []


def test_adjacent_by_rank_skips_the_forget_set():
    from mechunlearn.studies.robustness import adjacent_by_rank

    train = [f"pair{i}" for i in range(10)]
    assert adjacent_by_rank(train, [3, 1, 4, 0, 5, 9], forget=[3, 4], n=3) == [
        "pair1", "pair0", "pair5"]


def test_a_failing_check_is_a_nan_cell_and_a_note(pair, monkeypatch):
    """on_error="nan": NF4 without bitsandbytes and a broken int8 path give NaN cells and
    notes; the other checks still run; "raise" (the default) still raises."""
    import sys

    import mechunlearn.robustness.table as T

    m, c = pair
    edits = {"project": Edit.runtime(m, _project(m, 1))}
    data = [("the quick", " brown fox")]
    kw = dict(relearn_steps=2, max_new_tokens=3)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if missing
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    real = T.quantized

    def broken(model, scheme="int8"):
        if scheme == "int8":
            raise RuntimeError("no int8 kernel here")
        return real(model, scheme)

    monkeypatch.setattr(T, "quantized", broken)
    monkeypatch.setattr(T, "has_bitsandbytes", lambda: False)
    df = robustness_table(m, edits, PROMPTS[:3], data, lambda r: "the" in r, on_error="nan", **kw)
    row = df.set_index("variant").loc["project"]
    assert math.isnan(row.int8_bad_rate) and math.isnan(row.nf4_bad_rate)
    assert not math.isnan(row.relearn_bad_rate) and not math.isnan(row.recovered_last)
    notes = df.attrs["notes"]
    assert any("int8" in n and "no int8 kernel" in n for n in notes)
    assert any("nf4" in n and "bitsandbytes" in n for n in notes)
    with pytest.raises(RuntimeError, match="no int8 kernel"):
        robustness_table(m, edits, PROMPTS[:3], data, lambda r: "the" in r, schemes=("int8",),
                         **kw)
    with pytest.raises(ConfigError, match="on_error"):
        robustness_table(m, edits, PROMPTS[:3], data, lambda r: True, on_error="skip", **kw)
