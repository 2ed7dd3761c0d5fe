"""Silent wrong answers found by a new-user run (session 5, task E), each as a test that fails
without its fix: int positions under KV-cache decoding, out-of-range positions, preference
pairs with chosen == rejected, zero-norm RepSim queries and constant centred features,
identical --pos/--neg content, and score-based methods writing a uniform 'weight' column."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mechunlearn import apply
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.interventions import Clamp, Erase, Patch, Project, Steer
from mechunlearn.sites import Site

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SITE = Site("blocks.0.hook_resid_pre")
D = 32


def _steer(positions):
    u = torch.randn(D, generator=torch.Generator().manual_seed(3)) * 20  # flips tokens
    return Steer(u, 1.0, SITE, positions=positions)


def _tl_generate(model, ids, kv, iv=None):
    """TransformerLens's own greedy ``generate``: (tokens, per-step logits [steps, b, vocab])."""
    def run():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, use_past_kv_cache=kv,
                             verbose=False, output_logits=True)
        return out.sequences, torch.stack(list(out.logits))
    if iv is None:
        return run()
    with apply(model, iv):
        return run()


# ------------------------------------------------------------------ 1. KV-cache decoding
@pytest.mark.parametrize("positions", [[0], 1, [-1]])
def test_int_positions_under_transformerlens_kv_cache_generate(tiny_bridge, positions):
    """TL's generate runs each new token as a length-1 pass; an edit at position 0 must stay on
    the prompt's first token (it landed on every generated token) and -1 on each pass's last
    token of the whole sequence: the tokens equal the no-cache reference path's."""
    ids = tiny_bridge.to_tokens("the quick brown fox", prepend_bos=False)
    iv = _steer(positions)
    (ref, ref_lg), (fast, fast_lg) = (_tl_generate(tiny_bridge, ids, kv, iv) for kv in (0, 1))
    _, plain_lg = _tl_generate(tiny_bridge, ids, False)
    assert fast.tolist() == ref.tolist()
    torch.testing.assert_close(fast_lg, ref_lg, atol=1e-4, rtol=1e-4)
    assert (ref_lg - plain_lg).abs().amax() > 1e-2  # the edit changes the output


def test_int_positions_under_transformerlens_generate_batched(tiny_bridge):
    """TL's generate on a list left-pads and passes its own attention_mask: position 0 is
    each row's first real token, with or without the cache."""
    texts = ["the quick brown fox", "the lazy dog", "over"]

    def run(kv, iv=None):
        def g():
            return model.generate(texts, max_new_tokens=6, do_sample=False, verbose=False,
                                  use_past_kv_cache=kv, return_type="tokens").tolist()
        if iv is None:
            return g()
        with apply(model, iv):
            return g()

    model = tiny_bridge
    iv = _steer([0])
    assert run(True, iv) == run(False, iv) != run(False)


def test_int_positions_under_kv_cache_batched_left_padded(tiny_bridge):
    """Batched, padded prompts: mechunlearn's own cached decoder through the bridge
    (``kv_cache=True``, left-padded internally) equals the reference at position 0 too, and
    its first-use self-check passes under the edit (it failed and fell back to the slow
    path; once checked without hooks, later calls gave wrong tokens silently)."""
    from mechunlearn import fastpath
    from mechunlearn.errors import FastPathMismatchWarning
    from mechunlearn.lm import greedy
    from mechunlearn.tokens import TokenBatch

    tok = tiny_bridge.tokenizer
    texts = ["the quick brown fox", "the lazy dog", "over"]
    enc = tok(texts, return_tensors="pt", padding=True)
    tb = TokenBatch(enc["input_ids"], enc["attention_mask"])
    pad, iv = tok.pad_token_id, _steer([0])
    with apply(tiny_bridge, iv):
        ref = greedy(tiny_bridge, tb, 6, None, pad, kv_cache=False)
    fastpath.reset()  # the cached step's self-check runs under the edit: it must pass
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastPathMismatchWarning)
        with apply(tiny_bridge, iv):
            fast = greedy(tiny_bridge, tb, 6, None, pad, kv_cache=True)
    assert any(k.startswith("bridge-kv-cache") and v for k, v in fastpath.status().items())
    plain = greedy(tiny_bridge, tb, 6, None, pad, kv_cache=False)
    assert fast == ref and ref != plain


def test_unknown_cache_length_refuses_position_edits():
    """A pass continuing a cache whose length cannot be read: int positions raise, 'all'
    still works (it needs no offset)."""

    class Tiny(torch.nn.Module):
        def __init__(self, iv):
            super().__init__()
            self.iv = iv

        def forward(self, x, past_key_values=None):
            return self.iv(x)

    from mechunlearn.masks import edit_masks, track_passes

    x = torch.zeros(1, 1, D)
    for positions, ok in ((0, False), ("all", True)):
        m = Tiny(_steer(positions))
        with edit_masks(None, None), track_passes(m):
            if ok:
                assert m(x, past_key_values=object()).abs().sum() > 0
            else:
                with pytest.raises(ConfigError, match="KV cache of unknown length"):
                    m(x, past_key_values=object())
            m(x)  # a plain pass afterwards: the pass context was reset


# ------------------------------------------------------------------ 2. positions out of range
def _erase():
    from mechunlearn.directions.base import _make_eraser

    u = torch.zeros(D, 1)
    u[0] = 1
    return _make_eraser({"proj_left": u, "proj_right": u, "bias": None})


EDITS = {
    "Project": lambda pos: Project(torch.eye(D)[:1], SITE, positions=pos),
    "Steer": lambda pos: Steer(torch.ones(D), 1.0, SITE, positions=pos),
    "Clamp": lambda pos: Clamp(torch.eye(D)[0], 1.0, SITE, positions=pos),
    "Erase": lambda pos: Erase(_erase(), SITE, positions=pos),
    "Patch": lambda pos: Patch(torch.zeros(D), SITE, positions=pos),
}


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("pos", [[50], 4, -5, [0, 50]])
def test_position_outside_every_sequence_is_an_error(tiny_bridge, name, pos):
    ids = tiny_bridge.to_tokens("the quick brown fox", prepend_bos=False)
    assert ids.shape[1] == 4
    bad = [p for p in ([pos] if isinstance(pos, int) else pos) if not -4 <= p < 4][0]
    with pytest.raises(ConfigError, match=rf"position {bad} is outside.*length 4 real"):
        with apply(tiny_bridge, EDITS[name](pos)):
            tiny_bridge(ids)


def test_position_inside_some_rows_is_kept(tiny_bridge):
    """Padded batch: the long row's last position exists in that row only; it is edited there, no error."""
    tok = tiny_bridge.tokenizer
    enc = tok(["the quick brown fox", "the lazy"], return_tensors="pt", padding=True)
    n = enc["attention_mask"].sum(1).tolist()
    assert n[0] > n[1] and enc["attention_mask"][1, -1] == 0  # right-padded
    base = tiny_bridge(enc["input_ids"], attention_mask=enc["attention_mask"])
    with apply(tiny_bridge, _steer(n[0] - 1), attention_mask=enc["attention_mask"]):
        out = tiny_bridge(enc["input_ids"], attention_mask=enc["attention_mask"])
    assert not torch.allclose(out[0, n[0] - 1], base[0, n[0] - 1])
    torch.testing.assert_close(out[1], base[1])


# ------------------------------------------------------------------ 3. chosen == rejected
def test_explain_preferences_excludes_pairs_without_preference(tiny_bridge):
    from mechunlearn.attribution import explain_preferences

    site = Site("blocks.1.hook_resid_post", position="response_mean")
    train = [("the quick ", "brown fox", "lazy dog"), ("the lazy ", "dog", "dog"),
             ("over the ", "fox jumps", "dog sleeps"), ("the ", "quick", "lazy"),
             ("a ", "fox", "fox")]
    bad, good = [("the lazy", " dog")], [" fox"]
    kw = dict(good=good, k=2, space="activations")
    with pytest.warns(UserWarning, match=r"chosen == rejected.*\['1', '4'\]"):
        res = explain_preferences(tiny_bridge, site, train, bad, **kw)
    keep = [0, 2, 3]
    clean = explain_preferences(tiny_bridge, site, [train[i] for i in keep], bad,
                                ids=[str(i) for i in keep], **kw)
    for a, c in zip((res.combined, *res.per_query), (clean.combined, *clean.per_query)):
        assert len(a.scores) == 5 and torch.isnan(a.scores[[1, 4]]).all()
        torch.testing.assert_close(a.scores[keep], c.scores)
        assert set(a.indices) <= set(keep) and a.ids == c.ids
        assert [keep[i] for i in c.indices] == list(a.indices)
        assert a.ranking()[-2:].tolist() in ([1, 4], [4, 1])
    with pytest.raises(EmptyDataError, match="all 2 training pairs have chosen == rejected"):
        explain_preferences(tiny_bridge, site, [train[1], train[4]], bad, **kw)


# ------------------------------------------------------------------ 4. repsim degenerate input
def test_repsim_refuses_zero_query_and_constant_centred_features():
    from mechunlearn.attribution import make

    train = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    att = make("repsim", train, k=3)
    with pytest.raises(EmptyDataError, match="zero-norm"):
        att.attribute(torch.zeros(6))
    with pytest.raises(EmptyDataError, match="zero-norm"):
        att.attribute_many(torch.stack([train[0], torch.zeros(6)]))
    assert att.attribute(train[0]).indices[0] == 0  # a real query still works
    assert make("repsim", train, k=3, metric="euclidean").attribute(torch.zeros(6))
    const = torch.ones(20, 6) * 3.0
    with pytest.raises(ConfigError, match="identical"):
        make("repsim_centered", const, k=3)
    cen = make("repsim_centered", train, k=3)
    with pytest.raises(EmptyDataError, match="training mean"):
        cen.attribute(train.double().mean(0).float())


def test_repsim_centered_constant_store(tmp_path):
    from mechunlearn.attribution import make
    from mechunlearn.storage.store import FeatureStore

    st = FeatureStore.create(tmp_path / "st", Site("blocks.0.hook_resid_post"), "fp", 6)
    st.append(torch.ones(8, 6), [f"s{i}" for i in range(8)])
    st.flush()
    with pytest.raises(ConfigError, match="identical"):
        make("repsim_centered", FeatureStore.open(tmp_path / "st"), k=2)


# ------------------------------------------------------------------ 5/6. CLI
def _jsonl(path: Path, recs: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mechunlearn.models import tiny_gpt2

    d = tmp_path_factory.mktemp("silent") / "m"
    tiny_gpt2(folder=d)
    return str(d)


def test_directions_refuses_identical_pos_neg_content(model_dir, tmp_path):
    from mechunlearn.cli import app

    words = "the quick brown fox jumps over lazy dog".split()
    recs = [{"text": f"the quick {w} jumps"} for w in words]
    pos = _jsonl(tmp_path / "pos.jsonl", recs)
    neg = _jsonl(tmp_path / "neg.jsonl", recs[::-1])  # same samples, other order
    r = runner.invoke(app, ["directions", "--model", model_dir, "--pos", pos, "--neg", neg,
                            "--hook", "blocks.0.hook_resid_post", "--permutations", "0",
                            "--out", str(tmp_path / "d")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "pos.jsonl" in lines[0] and "neg.jsonl" in lines[0] and "same" in lines[0]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("method", ["repsim", "convex"])
def test_attribute_csv_writes_scores_and_weights_only_for_weighting_methods(
        model_dir, tmp_path, method):
    from mechunlearn.attribution import METHODS
    from mechunlearn.cli import app

    words = "the quick brown fox jumps over lazy dog".split()
    train = _jsonl(tmp_path / "t.jsonl", [{"prompt": f"the {a} ", "response": f"{b} {a}"}
                                          for a in words[:4] for b in words[4:]])
    query = _jsonl(tmp_path / "q.jsonl", [{"prompt": "the fox ", "response": "lazy dog"}])
    out = tmp_path / "a.csv"
    r = runner.invoke(app, ["attribute", "--model", model_dir, "--train", train, "--query",
                            query, "--hook", "blocks.1.hook_resid_post", "--method", method,
                            "--k", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert "score" in df.columns
    assert df["score"].is_monotonic_decreasing and df["score"].nunique() > 1
    if METHODS[method].weighted:
        assert {"weight", "residual"} <= set(df.columns)
    else:
        assert "weight" not in df.columns and "residual" not in df.columns


def test_registry_says_which_methods_weight():
    from mechunlearn.attribution import METHODS

    weighted = {n for n, m in METHODS.items() if m.weighted}
    assert weighted == {"convex", "convex_local", "convex_grad", "contrast_convex"}
    train = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))
    for name in ("convex", "repsim", "repsim_centered", "repsim_whitened", "random"):
        a = METHODS[name].build(train, k=5).attribute(train[3] * 0.5 + train[7] * 0.5)
        uniform = bool(torch.allclose(a.weights, torch.full_like(a.weights, 0.2)))
        assert uniform != METHODS[name].weighted, name
