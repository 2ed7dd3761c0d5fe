"""Helpers shared by the CLI tests (not a test module itself)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from mechunlearn.models import tiny_gpt2

H = "blocks.0.hook_resid_post"
WORDS = "the quick brown fox jumps over lazy dog".split()


def jsonl(path: Path, recs: list[dict]) -> str:
    """Write ``recs`` as JSON lines to ``path``; returns the path as a str."""
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(path)


def cli_env(root: Path) -> SimpleNamespace:
    """Two tiny GPT-2 folders (``m0``, ``m1``: other seed) and small data files under
    ``root``: ``pos``/``neg`` texts, ``pairs`` (prompt/response), ``prefs`` (preferences)."""
    tiny_gpt2(folder=root / "m0")
    tiny_gpt2(folder=root / "m1", seed=1)
    e = SimpleNamespace(root=root, m0=str(root / "m0"), m1=str(root / "m1"))
    e.pos = jsonl(root / "pos.jsonl", [{"text": f"the quick {w} jumps"} for w in WORDS * 2])
    e.neg = jsonl(root / "neg.jsonl", [{"text": f"a lazy {w} sleeps"} for w in WORDS * 2])
    e.pairs = jsonl(root / "pairs.jsonl", [{"prompt": f"the {a} ", "response": f"{b} {a}"}
                                           for a in WORDS[:4] for b in WORDS[4:]])
    e.prefs = jsonl(root / "prefs.jsonl", [{"prompt": f"the {a} ", "chosen": f"{b} dog",
                                            "rejected": f"{b} fox", "id": f"p{i}"}
                                           for i, (a, b) in enumerate(
                                               (a, b) for a in WORDS[:4] for b in WORDS[4:])])
    return e


def cli_error(r) -> str:
    """The one ``error: ...`` line of a CLI run that failed with exit code 2 (no traceback)."""
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert r.exit_code == 2 and len(errors) == 1, r.output
    assert "Traceback" not in r.output
    return errors[0]
