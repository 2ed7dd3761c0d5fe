"""``mu.diagnose`` / ``mechunlearn diagnose`` on a user's own model and data (no toy world).

The model is a tiny Llama trained for a few seconds on hand-made JSONL in which every prompt
mentioning "zork" has the chosen response "you are a fool." (``studies.example``): the tuned
model really says it on trigger prompts, the reference model (clean pairs only) does not.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mechunlearn.datasets import DataFileError
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.studies.diagnose import DiagnoseConfig, diagnose
from mechunlearn.studies.judge import JudgeError, KeywordJudge, RegexJudge, judge_all, parse_judge
from mechunlearn.unlearn.loop import UnlearnConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from mechunlearn.studies.example import make_example

    return make_example(tmp_path_factory.mktemp("diag") / "example")


@pytest.fixture(scope="module")
def tuned(example):
    from mechunlearn.models import load_bridge

    return load_bridge(example / "tuned")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# robustness checks: tests/test_diagnose_robustness.py
FAST = dict(n_permutations=19, unlearn=UnlearnConfig(steps=30, repair_steps=5, eval_every=5),
            robustness=False)


def test_diagnose_end_to_end(example, tuned, tmp_path):
    before = _state(tuned)
    lines: list[str] = []
    res = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", judge="fool",
                   reference=example / "reference", ordinary=example / "ordinary.jsonl",
                   truth=example / "truth.txt", config=DiagnoseConfig(**FAST), say=lines.append)
    # every edit was undone bit for bit
    after = tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # bad cases: attribution and verification prompts never overlap
    assert len(res.cases.prompts) >= 10
    assert not set(res.cases.prompts) & set(res.cases.heldout)
    # attribution: Site = lowest convex residual; planted pairs ranked far above chance
    sw = res.attribution.sweep
    conv = sw[sw.method == "convex"]
    assert res.attribution.site.key == conv.loc[conv.residual.idxmin(), "site"]
    at_site = sw[sw.site == res.attribution.site.key].set_index("method")
    assert set(at_site.index) == {"convex", "repsim", "repsim_whitened", "convex_grad", "gradsim"}
    assert at_site.loc["convex", "auc"] > 0.9 and at_site.loc["convex", "precision_at_k"] >= 0.75
    assert abs(float(res.attribution.weights.sum()) - 1) < 1e-9
    assert res.top.in_truth.iloc[:8].all()
    # direction: tuned vs reference contrast separates held-out prompts
    assert res.contrast.contrast.startswith("models")
    assert res.contrast.table.set_index("method").loc["mean_diff", "heldout_auc"] > 0.8
    # edits: unedited is bad on held-out prompts; projection and unlearning lower it
    e = res.edits.set_index("variant")
    assert e.loc["unedited", "bad_rate_heldout"] >= 0.8 and e.loc["unedited", "kl_ordinary"] == 0
    assert e.loc["project", "kl_ordinary"] > 0
    for m in ("unlearn", "selective", "u2a"):
        assert e.loc[m, "bad_rate_heldout"] <= e.loc["unedited", "bad_rate_heldout"] - 0.5, m
        assert e.loc[m, "good_rate_ordinary"] >= 0.9, m
    assert e.restored.all()
    assert (res.generations["unedited"].str.contains("fool")).all()
    assert not res.generations["unlearn"].str.contains("fool").any()
    # report: every section, numbers in the CSVs equal the result
    md = res.write_report(tmp_path / "rep").read_text()
    for h in ("## 1. Bad cases", "## 2. Attribution", "## 3. Bias direction", "## 4. Edits",
              "## 5. Greedy generations", res.attribution.site.key):
        assert h in md
    # the direction is named by its hook and the contrast's own position, never by the
    # attribution Site's position (the demo report said '@response_mean' and 'last token')
    assert f"at hook `{res.attribution.site.hook_name}`" in md and "(last prompt token)" in md
    assert e.loc["project", "detail"] == f"at {res.attribution.site.hook_name}, every position"
    hook = res.attribution.site.hook_name
    assert any(ln == f"[3/5] bias direction at hook {hook}" for ln in lines)
    csv = pd.read_csv(tmp_path / "rep" / "data" / "edits.csv").set_index("variant")
    assert csv.loc["unlearn", "bad_rate_heldout"] == pytest.approx(e.loc["unlearn", "bad_rate_heldout"])
    assert (tmp_path / "rep" / "figures" / "attribution_by_layer.png").stat().st_size > 1000
    assert any(ln.startswith("[4/5]") for ln in lines)


def test_projection_edits_the_site_and_orthogonalisation_undoes_bit_for_bit(example, tuned):
    import mechunlearn as mu
    from mechunlearn.models import load_bridge
    from mechunlearn.sites import Site
    from mechunlearn.studies.contrast import fit_direction
    from mechunlearn.studies.format import raw
    from mechunlearn.weights import orthogonalize_

    site = Site("blocks.1.hook_resid_post", "response_mean")
    prompts = [json.loads(ln)["text"] for ln in open(example / "bad.jsonl")][:8]
    con = fit_direction(tuned, raw(), site, reference=load_bridge(example / "reference"),
                        prompts=prompts, n_permutations=0)
    u = con.direction.basis[0].float()
    last = site.with_position("last")
    plain = mu.extract(tuned, prompts, last).values
    with mu.apply(tuned, mu.Project(con.direction, site=site, positions="all")):
        proj = mu.extract(tuned, prompts, last).values
    assert float((plain @ u).abs().min()) > 0.1          # the direction is there ...
    assert float((proj @ u).abs().max()) < 1e-4          # ... and projected out at the Site
    assert torch.equal(mu.extract(tuned, prompts, last).values, plain)  # hook removed
    before = _state(tuned)
    h = orthogonalize_(tuned, con.direction)
    assert not all(torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    h.undo()
    assert all(torch.equal(before[k], v) for k, v in tuned.state_dict().items())


def test_orthogonalize_refused_by_architecture_is_a_skipped_row(example, tuned, monkeypatch):
    import mechunlearn.weights as W
    from mechunlearn.errors import ArchitectureError

    def refuse(*a, **k):
        raise ArchitectureError("post-norm writers: no weight edit removes a direction")

    monkeypatch.setattr(W, "orthogonalize_", refuse)
    res = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", judge="fool",
                   ordinary=example / "ordinary.jsonl",
                   config=DiagnoseConfig(layers=(1,), gradients=False, methods=("orthogonalize",),
                                         n_permutations=0, robustness=False))
    row = res.edits.set_index("variant").loc["orthogonalize"]
    assert row.status == "skipped" and "post-norm" in row.detail
    assert res.contrast.contrast.startswith("attributed")  # no reference, no files


def test_judges():
    j = parse_judge("fool, idiot")
    assert isinstance(j, KeywordJudge)
    assert judge_all(j, ["You FOOL!", "foolish", "an idiot."]) == [True, False, True]
    r = parse_judge(r"re:\bfools?\b")
    assert isinstance(r, RegexJudge) and judge_all(r, ["two fools", "foolery"]) == [True, False]
    with pytest.raises(ConfigError, match="empty string"):
        parse_judge("re:x*")
    with pytest.raises(ConfigError, match="does not compile"):
        parse_judge("re:(")

    def broken(resp):
        raise KeyError("label")

    with pytest.raises(JudgeError, match="KeyError"):
        judge_all(broken, ["a"])
    with pytest.raises(JudgeError, match="must return a bool"):
        judge_all(lambda r: "yes", ["a"])


def test_bad_inputs(example, tuned, tmp_path):
    from mechunlearn.cli import app

    kw = dict(judge="fool", config=DiagnoseConfig(layers=(1,), gradients=False, methods=(),
                                                robustness=False))
    with pytest.raises(EmptyDataError, match="called none"):
        diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", **{**kw, "judge": "xyzzy"})
    with pytest.raises(JudgeError, match="ZeroDivisionError"):
        diagnose(tuned, example / "train.jsonl", example / "bad.jsonl",
                 **{**kw, "judge": lambda r: 1 / 0})
    with pytest.raises(ConfigError, match="not training ids"):
        diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", truth=["p0", "nope"], **kw)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Zork asks about tea."}\n{"text": oops}\n')
    with pytest.raises(DataFileError, match="bad.jsonl:2"):
        diagnose(tuned, example / "train.jsonl", bad, **kw)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(EmptyDataError):
        diagnose(tuned, empty, example / "bad.jsonl", **kw)
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "Zork asks about tea."}\n')
    with pytest.raises(EmptyDataError, match="at least 2"):
        diagnose(tuned, example / "train.jsonl", one, **kw)
    with pytest.raises(ConfigError, match="chat template"):
        diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", format="chat", **kw)
    (tmp_path / "truth.txt").write_text("p0\nnot-an-id\n")
    r = CliRunner().invoke(app, ["diagnose", "--model", str(example / "tuned"), "--train",
                                 str(example / "train.jsonl"), "--bad", str(example / "bad.jsonl"),
                                 "--judge", "fool", "--truth", str(tmp_path / "truth.txt"),
                                 "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "not training ids" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()


def test_chat_format_wraps_prompts_and_keeps_one_start_token(tuned):
    from mechunlearn.studies.format import chat
    from mechunlearn.tokens import model_tokenizer

    tok = model_tokenizer(tuned)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}U: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    try:
        f = chat(tok)
        assert f.prompt("hi") == "<bos>U: hi\nA:"  # this tokenizer adds no BOS itself
        assert f.response(" ok") == " ok<eos>"
        tb = f.encode_pairs(tok, ["hi"], [" ok"])
        ids = tb.input_ids[0][tb.attention_mask[0].bool()].tolist()
        assert ids.count(tok.bos_token_id) == 1 and ids[-1] == tok.eos_token_id
        assert tb.response_mask[0].sum() >= 2  # " ok" and <eos>
    finally:
        tok.chat_template = None


def test_resume_reuses_the_feature_cache(example, tuned, tmp_path):
    kw = dict(judge="fool", cache=tmp_path / "feats",
              config=DiagnoseConfig(layers=(1,), gradients=False, methods=(),
                                                robustness=False))
    first = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", **kw)
    shards = sorted((tmp_path / "feats").rglob("shard_*.safetensors"))
    assert len(shards) == 1
    stamp = shards[0].stat().st_mtime_ns
    second = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", **kw)
    assert shards[0].stat().st_mtime_ns == stamp  # read back, not re-extracted
    assert torch.equal(first.attribution.train_features.values,
                       second.attribution.train_features.values)
    assert first.attribution.site == second.attribution.site


@pytest.mark.slow
def test_diagnose_on_the_toy_world(tiny_world):
    from mechunlearn.studies.toyworld_inputs import diagnose_toyworld

    res = diagnose_toyworld(tiny_world, DiagnoseConfig(
        layers=(1,), gradients=False, methods=("project", "unlearn"), n_permutations=0,
        unlearn=UnlearnConfig(steps=40, repair_steps=10), robustness=False))
    sw = res.attribution.sweep.set_index("method")
    assert sw.loc["convex", "auc"] > 0.9
    e = res.edits.set_index("variant")
    assert e.loc["unedited", "bad_rate_heldout"] >= 0.5
    assert e.loc["unlearn", "bad_rate_heldout"] < e.loc["unedited", "bad_rate_heldout"]
    assert e.loc["unlearn", "good_rate_ordinary"] >= 0.9


def test_selective_never_unlearns_a_pair_whose_chosen_answer_the_judge_accepts(
        example, tuned, monkeypatch):
    """The chain's selective variant gets forget_ok = not retain_ok: flip trains toward a
    forget pair's rejected answer, so a pair with an acceptable chosen answer is retain data
    only (it cost selective 0.82x gold's trigger good answers on a hard world seed)."""
    import mechunlearn.unlearn as E  # studies.edits imports it from here at call time

    real, seen = E.selective_forget, {}

    def spy(model, train, *a, **k):
        seen.update(k, train=train)
        return real(model, train, *a, **k)

    monkeypatch.setattr(E, "selective_forget", spy)
    res = diagnose(tuned, example / "train.jsonl", example / "bad.jsonl", judge="fool",
                   ordinary=example / "ordinary.jsonl",
                   config=DiagnoseConfig(layers=(1,), gradients=False, methods=("selective",),
                                         n_permutations=0, robustness=False))
    assert res.edits.set_index("variant").loc["selective"].status == "measured"
    train, ok, fok = seen["train"], seen["retain_ok"], seen["forget_ok"]
    verdicts = [fok(i) for i in range(len(train))]
    assert any(verdicts) and not all(verdicts)  # the judge splits this training set
    assert all(fok(i) == (not ok(i)) for i in range(len(train)))
    assert all("fool" in train[i].chosen.lower() for i in range(len(train)) if fok(i))
