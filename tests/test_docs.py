"""Every ```python block in README.md and docs/*.md runs (blocks of one file share a namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [f for f in FILES if _blocks(f)], ids=lambda p: p.name)
def test_doc_code_blocks_run(path, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path / "cache"))
    text = path.read_text()
    if "harmless-base-test.jsonl.gz" in text:  # docs that read the shared hh-rlhf sample
        data = request.getfixturevalue("hh_rlhf_path")
        (tmp_path / "harmless-base-test.jsonl.gz").symlink_to(os.path.abspath(data))
    if "toyworld.load(" in text:  # reuse the session's tiny world (no retraining)
        world = request.getfixturevalue("tiny_world")
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "toyworld").symlink_to(world.path.parent)
    ns: dict = {"__name__": f"doc_{path.stem}"}
    for i, code in enumerate(_blocks(path)):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), ns)
        except Exception as e:  # pragma: no cover - the message is the point
            raise AssertionError(f"{path.name} code block {i} failed: {e!r}\n{code}") from e


def test_readme_has_the_two_commands():
    text = (ROOT / "README.md").read_text()
    demo = "pip install torch==2.13.0 && pip install -c constraints.txt -e . && mechunlearn demo"
    test = ('pip install torch==2.13.0 && pip install -c constraints.txt -e ".[dev]" && '
            "python -m pytest -q")
    assert demo in text and test in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert ('pip install -q torch==2.13.0 && pip install -q -c constraints.txt -e ".[dev]"'
            in ci)
    assert "python -m pytest -q" in ci
    # the lock pins what the code relies on, inside pyproject's bounds
    lock = (ROOT / "constraints.txt").read_text()
    for pkg in ("torch==2.13.0", "transformers==5.23.0", "transformer-lens==4.3.0"):
        assert f"\n{pkg}\n" in lock
