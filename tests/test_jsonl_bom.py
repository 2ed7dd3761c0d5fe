"""JSONL written with a UTF-8 byte order mark (Windows editors) is read by the one JSONL
reader, plain and gzipped, strict and lenient (issue 15 follow-up: it was rejected)."""

from __future__ import annotations

import gzip
import json

from mechunlearn.data import jsonl_lines, read_jsonl
from mechunlearn.seal.data import load_preferences

BOM = "\ufeff"


def _write(path, recs, gz=False):
    text = BOM + "\n".join(json.dumps(r) for r in recs) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_bom_jsonl_is_read_everywhere(tmp_path):
    recs = [{"prompt": f"p{i}", "response": f" r{i}", "id": f"x{i}"} for i in range(3)]
    for gz in (False, True):
        p = _write(tmp_path / f"d{int(gz)}.jsonl{'.gz' if gz else ''}", recs, gz)
        r = read_jsonl(p)
        assert r.kind == "pair" and r.ids == ["x0", "x1", "x2"]
        assert r.items[0] == ("p0", " r0")
        assert [n for n, _ in jsonl_lines(p)] == [1, 2, 3]
    prefs = [{"prompt": f"question {i}?", "chosen": f" yes {i}", "rejected": f" no {i}"}
             for i in range(4)]
    pairs, rep = load_preferences(_write(tmp_path / "prefs.jsonl", prefs))
    assert len(pairs) == 4 and rep.n_skipped == 0


def test_bad_lines_still_named(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\xff\xfe\n{"text":\n')
    got = list(jsonl_lines(p))
    assert got[0] == (1, {"text": "a"})
    assert [(n, e.reason) for n, e in got[1:]] == [(2, "not_utf8"), (3, "bad_json")]
