"""Bad inputs through the Python API (issue 15, section 5).

Each case must raise its typed :class:`MechUnlearnError` subclass (matching a phrase that
says what is wrong) and leave every file in the test's folder untouched (hashed before and
after). One tiny GPT-2 folder is shared by the module. CLI cases: test_bad_inputs_cli.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from _tree import tree

from mechunlearn import errors as E
from mechunlearn.datasets import DataFileError, model_inputs, read_jsonl
from mechunlearn.directions import Directions
from mechunlearn.directions.base import RankDeficientError
from mechunlearn.directions.mean_diff import mean_diff
from mechunlearn.features import Features, extract
from mechunlearn.hooks import Compose, apply
from mechunlearn.interventions import Clamp, Patch, Project, Steer
from mechunlearn.models import load_bridge, tiny_gpt2
from mechunlearn.provenance import strict
from mechunlearn.sites import Site, resid
from mechunlearn.store import FeatureStore, RunningMoments
from mechunlearn.unlearn.loop import unlearn
from mechunlearn.weights import orthogonalize_

pytestmark = pytest.mark.usefixtures("one_thread")

H = "blocks.0.hook_resid_post"
TEXTS = ["the quick fox", "lazy dog", "the brown fox jumps", "over the dog"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    model = tiny_gpt2(folder=root / "model")
    feats = extract(model, TEXTS, resid(0, "post", "mean"))
    store = FeatureStore.create(root / "store", resid(0), feats.fingerprint, 32, shard_size=2)
    store.append(feats.values, feats.ids)
    (root / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    dirs = mean_diff(feats.values[:2], feats.values[2:], site=resid(0), n_permutations=0,
                     n_splits=2)
    other = tiny_gpt2(seed=3, folder=root / "other")
    return SimpleNamespace(root=root, model=model, feats=feats, store=store, dirs=dirs,
                           other=other)


def _dirs_on_other(e):
    f = extract(e.other, TEXTS, resid(0, "post", "mean"))
    d = mean_diff(f.values[:2], f.values[2:], site=resid(0), n_permutations=0, n_splits=2)
    d = Directions(d.basis, d.scores, d.site, d.method, d.settings, fingerprint=f.fingerprint)
    with strict(), apply(e.model, Project(d)):
        e.model(torch.tensor([[5, 6]]), return_type=None)


def _write(e, name, text):
    p = e.root / "scratch" / name
    p.parent.mkdir(exist_ok=True)
    if not p.exists():
        p.write_text(text)
    return p


def _corrupt_in_place(e):
    import shutil

    dst = e.root / "scratch" / "corrupt_store"
    if not dst.exists():
        shutil.copytree(e.root / "store", dst)
        shard = dst / "shard_000001.safetensors"
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0x55  # a value byte: same size, other bytes
        shard.write_bytes(bytes(data))
    FeatureStore.open(dst).load()


def _no_tokenizer(e):
    import shutil

    dst = e.root / "scratch" / "no_tok"
    if not dst.exists():
        dst.mkdir(parents=True)
        for f in (e.root / "model").iterdir():
            if not any(k in f.name for k in ("token", "vocab", "merges")):
                shutil.copy(f, dst / f.name)
    load_bridge(dst)


def _pattern_extract(e):
    extract(e.model, torch.tensor([[5, 6], [7, 8]]), Site("blocks.0.attn.hook_pattern", "last"))


def _steer_run(e, iv, **kw):
    with apply(e.model, iv, **kw):
        e.model(torch.tensor([[5, 6, 7]]), return_type=None)


X = torch.randn(6, 32)

CASES = [
    # --- Sites
    ("site_empty_name", lambda e: Site(""), E.ConfigError, "non-empty"),
    ("site_bad_position", lambda e: Site(H, "first"), E.ConfigError, "position"),
    ("site_bool_position", lambda e: Site(H, True), E.ConfigError, "position"),
    ("site_negative_head", lambda e: Site(H, head=-1), E.ConfigError, "head"),
    ("site_unknown_hook", lambda e: extract(e.model, TEXTS, Site("blocks.0.hook_resid_pots")),
     E.UnknownHookError, "Closest"),
    ("site_layer_out_of_range", lambda e: extract(e.model, TEXTS, resid(9)),
     E.UnknownHookError, "blocks 0..1"),
    ("site_from_bad_dict", lambda e: Site.from_dict({"position": "last"}), E.ConfigError,
     "Site dict"),
    ("resid_bad_kind", lambda e: resid(0, "middle"), E.ConfigError, "resid kind"),
    # --- extract
    ("extract_no_sites", lambda e: extract(e.model, TEXTS, []), E.ConfigError, "at least one"),
    ("extract_site_as_str", lambda e: extract(e.model, TEXTS, [H]), E.ConfigError, "Site objects"),
    ("extract_batch_size_0", lambda e: extract(e.model, TEXTS, resid(0), batch_size=0),
     E.ConfigError, "batch_size"),
    ("extract_batch_size_float", lambda e: extract(e.model, TEXTS, resid(0), batch_size=1.5),
     E.ConfigError, "batch_size"),
    ("extract_ids_wrong_length", lambda e: extract(e.model, TEXTS, resid(0), ids=["a"]),
     E.ShapeError, "ids"),
    ("extract_ids_duplicate", lambda e: extract(e.model, TEXTS, resid(0), ids=["a"] * 4),
     E.ConfigError, "unique"),
    ("extract_attention_pattern", _pattern_extract, E.LayoutError, "hook_z"),
    ("extract_token_id_hook", lambda e: extract(e.model, TEXTS, Site("embed.hook_in")),
     E.LayoutError, "token ids"),
    ("extract_position_out_of_range", lambda e: extract(e.model, TEXTS, resid(0, "post", 50)),
     E.ShapeError, "out of range"),
    ("extract_response_mean_on_texts",
     lambda e: extract(e.model, TEXTS, resid(0, "post", "response_mean")), E.ConfigError,
     "response mask"),
    ("extract_float_token_tensor", lambda e: extract(e.model, torch.rand(2, 3), resid(0)),
     E.ShapeError, "integer"),
    ("extract_token_id_above_vocab",
     lambda e: extract(e.model, torch.tensor([[5, 100000]]), resid(0)), E.ShapeError,
     "vocabulary"),
    ("extract_negative_token_id", lambda e: extract(e.model, torch.tensor([[-1, 5]]), resid(0)),
     E.ShapeError, "vocabulary"),
    ("extract_head_out_of_range",
     lambda e: extract(e.model, TEXTS, Site("blocks.0.attn.hook_z", "last", head=5)),
     E.ShapeError, "head 5"),
    ("extract_head_on_headless_hook", lambda e: extract(e.model, TEXTS, Site(H, "last", head=0)),
     E.ShapeError, "no head"),
    ("extract_int_dtype", lambda e: extract(e.model, TEXTS, resid(0), dtype=torch.int64),
     E.DTypeError, "floating"),
    ("extract_bad_padding_side",
     lambda e: extract(e.model, TEXTS, resid(0), padding_side="middle"), E.ConfigError,
     "padding_side"),
    ("extract_empty_list", lambda e: extract(e.model, [], resid(0)), E.EmptyDataError, "no"),
    ("extract_mixed_items", lambda e: extract(e.model, ["a b", ("p", "r")], resid(0)),
     E.ConfigError, "expected str"),
    ("features_rows_ids_mismatch",
     lambda e: Features(torch.zeros(3, 2), ("a",), resid(0), "fp"), E.ShapeError, "3 rows"),
    # --- interventions
    ("steer_nan_vector", lambda e: Steer(torch.tensor([float("nan")] * 32), site=resid(0)),
     E.NonFiniteError, "NaN"),
    ("steer_matrix_vector", lambda e: Steer(torch.ones(2, 32), site=resid(0)), E.ShapeError,
     r"\[d\]"),
    ("steer_nan_alpha", lambda e: Steer(torch.ones(32), alpha=float("nan"), site=resid(0)),
     E.NonFiniteError, "alpha"),
    ("steer_str_alpha", lambda e: Steer(torch.ones(32), alpha="2", site=resid(0)),
     E.ConfigError, "alpha"),
    ("clamp_inf_value", lambda e: Clamp(torch.ones(32), value=float("inf"), site=resid(0)),
     E.NonFiniteError, "value"),
    ("project_zero_vector", lambda e: Project(torch.zeros(32), site=resid(0)), E.ShapeError,
     "zero"),
    ("project_dependent_rows", lambda e: Project(torch.ones(2, 32), site=resid(0)),
     RankDeficientError, "dependent"),
    ("project_no_site", lambda e: Project(torch.ones(32)), E.ConfigError, "site"),
    ("patch_no_site", lambda e: Patch(torch.ones(32)), E.ConfigError, "site"),
    ("project_wrong_d", lambda e: _steer_run(e, Project(torch.ones(31), site=resid(0))),
     E.ShapeError, "d=31"),
    ("apply_nothing", lambda e: _steer_run(e, *()) if False else apply(e.model).__enter__(),
     E.ConfigError, "at least one"),
    ("apply_not_intervention", lambda e: apply(e.model, "steer").__enter__(), E.ConfigError,
     "Interventions"),
    ("positions_unknown_word",
     lambda e: _steer_run(e, Steer(torch.ones(32), site=resid(0), positions="middle")),
     E.ConfigError, "Unknown positions"),
    ("positions_mask_wrong_shape",
     lambda e: _steer_run(e, Steer(torch.ones(32), site=resid(0),
                                   positions=torch.ones(1, 9, dtype=torch.bool))),
     E.ShapeError, "positions mask"),
    ("positions_response_without_mask",
     lambda e: _steer_run(e, Steer(torch.ones(32), site=resid(0), positions="response")),
     E.ConfigError, "response_mask"),
    ("apply_mask_wrong_shape",
     lambda e: _steer_run(e, Steer(torch.ones(32), site=resid(0), positions=0),
                          attention_mask=torch.ones(1, 9)), E.ShapeError, "attention_mask"),
    ("compose_empty", lambda e: Compose(), E.ConfigError, "at least one"),
    ("compose_not_intervention", lambda e: Compose(torch.ones(3)), E.ConfigError,
     "Interventions"),
    ("directions_from_other_model_strict", _dirs_on_other, E.ModelMismatchError, "fitted on"),
    # --- weight edits
    ("orthogonalize_wrong_d", lambda e: orthogonalize_(e.model, torch.ones(1, 31)),
     E.ShapeError, "d_model=32"),
    ("orthogonalize_nan", lambda e: orthogonalize_(e.model, torch.full((32,), float("nan"))),
     E.NonFiniteError, "NaN"),
    ("orthogonalize_non_residual_site",
     lambda e: orthogonalize_(e.model, Directions(torch.ones(1, 32),
                                                  site=Site("blocks.0.attn.hook_z"))),
     E.ConfigError, "residual"),
    ("orthogonalize_unknown_writer",
     lambda e: orthogonalize_(e.model, torch.ones(32), writers=["nope"]), E.ArchitectureError,
     "writer kind"),
    # --- stores
    ("store_open_missing", lambda e: FeatureStore.open(e.root / "nope"), E.StoreError,
     "manifest"),
    ("store_corrupt_in_place", _corrupt_in_place, E.StoreError, "sha256"),
    ("store_create_d_0", lambda e: FeatureStore.create(e.root / "scratch/s0", resid(0), "f", 0),
     E.ConfigError, "d and shard_size"),
    ("store_reopen_other_model",
     lambda e: FeatureStore.create(e.root / "store", resid(0), "another", 32),
     E.StoreMismatchError, "fingerprint"),
    ("store_append_wrong_shape", lambda e: FeatureStore.open(e.root / "store").append(
        torch.ones(2, 31), ["x", "y"]), E.ShapeError, "append"),
    ("store_append_nan", lambda e: FeatureStore.open(e.root / "store").append(
        torch.full((1, 32), float("nan")), ["x"]), E.NonFiniteError, "NaN"),
    ("store_rows_out_of_range", lambda e: e.store.rows([0, 99]), E.ShapeError, "Row indices"),
    ("moments_wrong_width", lambda e: RunningMoments(3).update(torch.ones(2, 4)), E.ShapeError,
     "RunningMoments"),
    ("moments_cov_too_few", lambda e: RunningMoments(3).cov(), E.EmptyDataError, "Covariance"),
    ("directions_load_missing", lambda e: Directions.load(e.root / "nodirs"), E.StoreError,
     "Directions"),
    # --- direction finders
    ("finder_one_sample", lambda e: mean_diff(X[:1], X[1:]), E.EmptyDataError, "at least 2"),
    ("finder_nan_features",
     lambda e: mean_diff(torch.full((3, 32), float("nan")), X), E.NonFiniteError, "NaN"),
    ("finder_d_mismatch", lambda e: mean_diff(X, torch.randn(6, 31)), E.ShapeError, "d=32"),
    ("finder_labels_not_binary", lambda e: mean_diff(X, labels=[0, 1, 2, 0, 1, 2]),
     E.ConfigError, "binary"),
    ("finder_negative_permutations", lambda e: mean_diff(X[:3], X[3:], n_permutations=-1),
     E.ConfigError, "n_permutations"),
    ("finder_alpha_out_of_range", lambda e: mean_diff(X[:3], X[3:], alpha=1.5), E.ConfigError,
     "alpha"),
    ("finder_1d_features", lambda e: mean_diff(torch.ones(5), X), E.ShapeError, r"\[n, d\]"),
    # --- unlearning
    ("unlearn_empty_responses",
     lambda e: unlearn(e.model, [("the fox", ""), ("lazy", " ")], [("a", " dog")], "npo"),
     E.EmptyDataError, "empty response"),
    ("unlearn_forget_is_str", lambda e: unlearn(e.model, "the fox", [("a", " dog")], "npo"),
     E.ConfigError, "list of pairs"),
    ("unlearn_empty_forget", lambda e: unlearn(e.model, [], [("a", " dog")], "npo"),
     E.EmptyDataError, "empty"),
    # --- data files
    ("jsonl_missing", lambda e: read_jsonl(e.root / "missing.jsonl"), DataFileError,
     "does not exist"),
    ("jsonl_is_folder", lambda e: read_jsonl(e.root / "model"), DataFileError, "folder"),
    ("jsonl_bad_json", lambda e: read_jsonl(_write(e, "b.jsonl", '{"text": "a"}\n{"text":\n')),
     DataFileError, "b.jsonl:2"),
    ("jsonl_mixed_kinds", lambda e: read_jsonl(_write(
        e, "m.jsonl", '{"text": "a"}\n{"prompt": "p", "response": "r"}\n')), DataFileError,
     "mixes"),
    ("jsonl_non_string", lambda e: read_jsonl(_write(e, "n.jsonl", '{"text": 5}\n')),
     DataFileError, "strings"),
    ("jsonl_unknown_keys", lambda e: read_jsonl(_write(e, "k.jsonl", '{"body": "x"}\n')),
     DataFileError, "expected 'text'"),
    ("jsonl_empty", lambda e: read_jsonl(_write(e, "e.jsonl", "\n\n")), E.EmptyDataError,
     "no records"),
    ("jsonl_duplicate_ids", lambda e: read_jsonl(_write(
        e, "i.jsonl", '{"text": "a", "id": 1}\n{"text": "b", "id": 1}\n')), E.ConfigError,
     "unique"),
    ("triples_without_field", lambda e: model_inputs(read_jsonl(_write(
        e, "t.jsonl", '{"prompt": "p", "chosen": "c", "rejected": "r"}\n'))), E.ConfigError,
     "chosen or"),
    ("field_on_texts", lambda e: model_inputs(read_jsonl(e.root / "d.jsonl"), "chosen"),
     E.ConfigError, "only applies"),
    # --- model folders
    ("model_folder_missing", lambda e: load_bridge(e.root / "nomodel"), E.MechUnlearnError,
     "missing"),
    ("model_folder_is_file", lambda e: load_bridge(e.root / "d.jsonl"), E.MechUnlearnError,
     "a file"),
    ("model_folder_without_tokenizer", _no_tokenizer, E.MechUnlearnError, "no tokenizer"),
    # --- the lead's items, included because they pass
    ("extract_empty_string_sample", lambda e: extract(e.model, ["ok", ""], resid(0)),
     E.EmptyDataError, "empty text"),
    ("extract_single_str", lambda e: extract(e.model, "a string", resid(0)), E.ConfigError,
     "single str"),
]


@pytest.mark.parametrize("name,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(env, name, call, exc, match):
    before = tree(env.root)
    with pytest.raises(exc, match=match):
        call(env)
    after = tree(env.root)
    scratch = {k for k in after if k == "scratch" or k.startswith("scratch/")}  # case inputs
    assert {k: v for k, v in after.items() if k not in scratch} == \
        {k: v for k, v in before.items() if k not in scratch}, f"{name} changed files"
    changed = [k for k in scratch if k in before and before[k] != after[k]]
    assert not changed, f"{name} changed its own input files {changed}"
    n_hooks = sum(len(hp.fwd_hooks) for hp in env.model.hook_dict.values())
    assert n_hooks == 0, f"{name} left {n_hooks} hooks on the model"


def test_case_count():
    assert len(CASES) >= 60
