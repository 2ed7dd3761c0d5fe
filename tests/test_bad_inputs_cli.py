"""Bad inputs on the command line, and valid inputs that used to be refused (issue 15, §4-5).

Every bad case exits non-zero with one ``error: ...`` line, no traceback, and leaves every
file in the test folder untouched (hashed before and after).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from _tree import tree
from typer.testing import CliRunner

from mechunlearn.cli import app
from mechunlearn.models import tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
H = "blocks.0.hook_resid_post"


def _jsonl(path: Path, recs: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_cli")
    tiny_gpt2(folder=root / "model")
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog".split()

    def s(n):
        return " ".join(rng.choice(words) for _ in range(n))

    e = SimpleNamespace(root=root, model=str(root / "model"))
    e.texts = _jsonl(root / "texts.jsonl", [{"text": s(4)} for _ in range(8)])
    e.pairs = _jsonl(root / "pairs.jsonl", [{"prompt": s(3), "response": " " + s(2)}
                                            for _ in range(8)])
    e.prefs = _jsonl(root / "prefs.jsonl", [{"prompt": s(5), "chosen": " " + s(4),
                                             "rejected": " " + s(3)} for _ in range(120)])
    e.bad_prefs = _jsonl(root / "bad_prefs.jsonl",
                         [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 5
                         + [{"chosen": "only"}] * 3)
    return e


def _bad(e, name):
    m = {"MODEL": e.model, "TEXTS": e.texts, "PAIRS": e.pairs, "PREFS": e.prefs,
         "BADPREFS": e.bad_prefs, "ROOT": str(e.root)}
    return [m.get(a, a).replace("ROOT", str(e.root)) if isinstance(a, str) else a
            for a in name]


EX = ["extract", "--model", "MODEL", "--hook", H, "--out", "ROOT/out/x"]
CASES = [
    ("extract_unknown_hook", ["extract", "--model", "MODEL", "--data", "TEXTS", "--hook",
                              "blocks.0.hook_resid_pots", "--out", "ROOT/out/a"],
     "Unknown hook name"),
    ("extract_missing_data", EX + ["--data", "ROOT/none.jsonl"], "does not exist"),
    ("extract_data_is_folder", EX + ["--data", "MODEL"], "folder"),
    ("extract_bad_position", EX + ["--data", "TEXTS", "--position", "first"], "position"),
    ("extract_position_out_of_range", EX + ["--data", "TEXTS", "--position", "99"],
     "out of range"),
    ("extract_prefs_without_field", EX + ["--data", "PREFS"], "--field chosen"),
    ("extract_field_on_texts", EX + ["--data", "TEXTS", "--field", "chosen"], "only applies"),
    ("extract_field_bogus", EX + ["--data", "PREFS", "--field", "both"], "--field chosen"),
    ("extract_response_mean_on_texts", EX + ["--data", "TEXTS", "--position",
                                             "response_mean"], "response mask"),
    ("extract_pattern_hook", ["extract", "--model", "MODEL", "--data", "TEXTS", "--hook",
                              "blocks.0.attn.hook_pattern", "--out", "ROOT/out/p"], "hook_z"),
    ("extract_model_missing", ["extract", "--model", "ROOT/nomodel", "--data", "TEXTS",
                               "--hook", H, "--out", "ROOT/out/m"], "nomodel"),
    ("extract_model_is_file", ["extract", "--model", "TEXTS", "--data", "TEXTS",
                               "--hook", H, "--out", "ROOT/out/m2"], "texts.jsonl"),
    ("directions_bad_method", ["directions", "--model", "MODEL", "--pos", "PAIRS", "--neg",
                               "PAIRS", "--hook", H, "--method", "magic", "--out",
                               "ROOT/out/d"], "--method"),
    ("directions_prefs_file", ["directions", "--model", "MODEL", "--pos", "PREFS", "--neg",
                               "PAIRS", "--hook", H, "--out", "ROOT/out/d2"],
     "prompt'+'response"),
    ("attribute_bad_method", ["attribute", "--model", "MODEL", "--train", "PAIRS", "--query",
                              "PAIRS", "--hook", H, "--method", "magic", "--out",
                              "ROOT/out/a.csv"], "--method"),
    ("edit_bad_how", ["edit", "sharpen", "--model", "MODEL", "--out", "ROOT/out/e"],
     "orthogonalize"),
    ("edit_orthogonalize_no_directions", ["edit", "orthogonalize", "--model", "MODEL",
                                          "--out", "ROOT/out/e2"], "--directions"),
    ("edit_orthogonalize_missing_directions", ["edit", "orthogonalize", "--model", "MODEL",
                                               "--directions", "ROOT/nodirs", "--out",
                                               "ROOT/out/e3"], "Directions"),
    ("edit_unlearn_no_retain", ["edit", "unlearn", "--model", "MODEL", "--forget", "PAIRS",
                                "--out", "ROOT/out/e4"], "--retain"),
    ("edit_unlearn_texts", ["edit", "unlearn", "--model", "MODEL", "--forget", "TEXTS",
                            "--retain", "PAIRS", "--out", "ROOT/out/e5"], "prompt/response"),
    ("sweep_bad_kind", ["sweep", "--model", "MODEL", "--pos", "PAIRS", "--neg", "PAIRS",
                        "--kinds", "resid_side", "--out", "ROOT/out/s.csv"], "--kinds: unknown value(s) ['resid_side']"),
    ("sweep_bad_method", ["sweep", "--model", "MODEL", "--pos", "PAIRS", "--neg", "PAIRS",
                          "--method", "magic", "--out", "ROOT/out/s2.csv"], "--method"),
    ("seal_malformed_records", ["seal", "--data", "BADPREFS", "--model", "MODEL", "--out",
                                "ROOT/out/seal", "--cache", "ROOT/out/cache"],
     "Skipped 3 (missing_field: 3)"),
    ("seal_missing_data", ["seal", "--data", "ROOT/none.jsonl", "--model", "MODEL", "--out",
                           "ROOT/out/seal2", "--cache", "ROOT/out/cache2"], "does not exist"),
]


@pytest.mark.parametrize("name,args,match", CASES, ids=[c[0] for c in CASES])
def test_bad_cli_input(env, name, args, match):
    before = tree(env.root)
    r = runner.invoke(app, _bad(env, args))
    out = r.output.strip()
    assert r.exit_code != 0, f"{name}: exit 0\n{out}"
    assert "Traceback" not in out and r.exception is None or isinstance(r.exception, SystemExit)
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out
    assert match in lines[0], lines[0]
    after = {k: v for k, v in tree(env.root).items() if not k.startswith("out/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("out/")}


# ------------------------------------------------------------- valid inputs (section 4)
def test_extract_reads_preference_records_with_field(env, tmp_path):
    from mechunlearn.store import FeatureStore

    outs = {}
    for field in ("chosen", "rejected"):
        r = runner.invoke(app, ["extract", "--model", env.model, "--data", env.prefs, "--hook",
                                H, "--position", "response_mean", "--field", field,
                                "--out", str(tmp_path / field)])
        assert r.exit_code == 0, r.output
        outs[field] = FeatureStore.open(tmp_path / field).load()
    assert len(outs["chosen"]) == 120
    assert (outs["chosen"].values - outs["rejected"].values).abs().max() > 1e-3


def test_seal_on_causal_lm_without_refusals(env, tmp_path):
    """A labeler that never fires and a GPT-2 folder: a report with findings, no crash."""
    r = runner.invoke(app, ["seal", "--data", env.prefs, "--model", env.model, "--out",
                            str(tmp_path / "rep"), "--cache", str(tmp_path / "c"),
                            "--boot", "10"])
    assert r.exit_code == 0, r.output
    assert "fired on 0 of" in r.output
    data_line = next(ln[ln.index("data: "):] for ln in r.output.splitlines() if "data: " in ln)
    assert "skipped" not in data_line and "None" not in data_line, data_line  # none skipped
    assert (tmp_path / "rep" / "summary.md").is_file()
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "fired on 0 of" in summary
    sites = (tmp_path / "rep" / "sites.csv").read_text()
    assert "@last" in sites and "@0" not in sites  # a causal LM pools at the last token


def test_minilm_folder_fingerprint_is_a_function_of_the_folder():
    import torch

    from mechunlearn.models import load_bridge, minilm_path
    from mechunlearn.provenance import model_fingerprint

    fps = []
    for seed in (1, 2):  # another process = another global RNG state
        torch.manual_seed(seed)
        fps.append(model_fingerprint(load_bridge(minilm_path())))
    assert fps[0] == fps[1]
