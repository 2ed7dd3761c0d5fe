"""plots.save_figure: atomic write, format from the suffix, refusals, optional close."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mechunlearn.errors import OutputPathError  # noqa: E402
from mechunlearn.plots import save_figure  # noqa: E402


def test_save_figure_writes_replaces_and_refuses(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_figure(fig, tmp_path / "b.svg")
    assert b"<svg" in svg.read_bytes()[:400]
    save_figure(fig, tmp_path / "a.png", dpi=50)  # an explicit path: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.svg"]  # no temp left
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputPathError):
        save_figure(fig, tmp_path / "dir")
    assert plt.fignum_exists(fig.number)
    save_figure(fig, tmp_path / "c.png", close=True)
    assert not plt.fignum_exists(fig.number)
