"""SEAL data loading: hh-rlhf parsing, malformed records, plain records, deterministic split."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn.errors import ConfigError
from mechunlearn.seal import (
    MalformedRecordError,
    load_hh_rlhf,
    load_records,
    split_dialogue,
    split_pairs,
)
from mechunlearn.seal.encode import encode_items

GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: Sure, here.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: No."}


def _write(path, lines: list[bytes], gz: bool = False) -> str:
    data = b"\n".join(lines) + b"\n"
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def test_parse_prompt_and_final_response():
    prompt, resp = split_dialogue(GOOD["chosen"])
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:"
    assert resp == "Sure, here."


def test_malformed_records_skipped_with_counts(tmp_path):
    lines = [
        _j(GOOD),                                                     # 1 ok
        _j({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}),  # 2 no Assistant
        _j({"chosen": "\n\nHuman: a\n\nAssistant:  ", "rejected": GOOD["rejected"]}),  # 3 empty
        b'{"chosen": "\xff\xfe bad", "rejected": "x"}',               # 4 not UTF-8
        b'{"chosen": ',                                               # 5 bad JSON
        b"",                                                          # blank: ignored
        _j({"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: y\n\nAssistant: b"}),
        _j(GOOD),                                                     # 8 ok (duplicate)
    ]
    pairs, rep = load_hh_rlhf(_write(tmp_path / "d.jsonl", lines))
    assert rep.n_loaded == len(pairs) == 2
    assert rep.n_skipped == 5 and rep.first_bad_line == 2
    assert rep.reasons == {"no_assistant_turn": 1, "empty_response": 1, "not_utf8": 1,
                           "bad_json": 1, "prompt_mismatch": 1}
    assert pairs[0].id != pairs[1].id and pairs[1].id.startswith(pairs[0].id)


def test_strict_raises_typed_error_with_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", [_j(GOOD), _j({"chosen": "no turns", "rejected": "x"})])
    with pytest.raises(MalformedRecordError) as e:
        load_hh_rlhf(path, strict=True)
    assert e.value.line == 2 and e.value.reason == "no_assistant_turn"
    assert isinstance(e.value, ValueError)


def test_truncated_gzip_keeps_earlier_lines(tmp_path):
    full = gzip.compress(b"\n".join([_j(GOOD)] * 200) + b"\n")
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    pairs, rep = load_hh_rlhf(str(path))
    assert 0 < len(pairs) < 200
    assert rep.reasons.get("truncated_stream") == 1
    assert rep.first_bad_line == rep.n_lines  # the error is the last thing seen
    with pytest.raises(MalformedRecordError) as e:
        load_hh_rlhf(str(path), strict=True)
    assert e.value.reason == "truncated_stream"


def test_gzip_detected_by_content_and_plain_records(tmp_path):
    path = _write(tmp_path / "noext", [_j(GOOD), _j({"prompt": "Q", "chosen": "A",
                                                   "rejected": "B"})], gz=True)
    pairs, rep = load_records(path)
    assert rep.n_skipped == 0 and [p.chosen for p in pairs] == ["Sure, here.", "A"]
    pairs2, rep2 = load_records([{"prompt": "Q", "chosen": "", "rejected": "B"},
                                 {"prompt": "Q", "chosen": "A", "rejected": "B"}])
    assert len(pairs2) == 1 and rep2.reasons == {"empty_response": 1}
    with pytest.raises(ConfigError):
        load_records(str(tmp_path / "missing.jsonl"))


def test_split_is_deterministic_and_order_free(hh_rlhf_path):
    pairs, rep = load_hh_rlhf(hh_rlhf_path, limit=200)
    assert rep.n_loaded == 200
    tr, te = split_pairs(pairs, 0.25, seed=1)
    tr2, te2 = split_pairs(pairs[::-1], 0.25, seed=1)
    assert {p.id for p in te} == {p.id for p in te2} and len(tr) + len(te) == 200
    assert 25 < len(te) < 75
    assert {p.id for p in split_pairs(pairs, 0.25, seed=2)[1]} != {p.id for p in te}


@settings(max_examples=30, deadline=None)
@given(turns=st.lists(st.text(alphabet="abc ?!\n", min_size=1, max_size=15), min_size=1,
                      max_size=4),
       final=st.text(alphabet="xyz .", min_size=1, max_size=20).filter(lambda s: s.strip()))
def test_split_dialogue_property(turns, final):
    text = "".join(f"\n\nHuman: {t}\n\nAssistant: ok" for t in turns) + "\n\nHuman: q"
    text += "\n\nAssistant: " + final
    prompt, resp = split_dialogue(text)
    assert resp == final.strip() and prompt.endswith("\n\nAssistant:")
    assert text.startswith(prompt)


def test_encode_keeps_dialogue_end(tiny_bridge):
    tok = tiny_bridge.tokenizer
    long_prompt = "the quick brown fox " * 30
    b = encode_items(tok, [(long_prompt, " lazy dog"), ("the", " fox")], max_length=12)
    assert b.input_ids.shape[1] == 12
    row = tok.decode(b.input_ids[0][b.attention_mask[0].bool()])
    assert row.endswith("lazy dog")
    assert b.response_mask[0].sum() >= 2 and not b.response_mask[0, 0]
