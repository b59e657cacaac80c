"""``xraybatch demo``: ends on the report (index.html and every figure it links) and says
what to open and what to run next; without matplotlib it still finishes."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from xraybatch.cli import main

pytestmark = pytest.mark.slow
N = 24


class ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources += [value for name, value in attrs if name == "src" and value]


def test_demo_ends_on_the_report(capsys, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    assert main(["demo", str(root), "--n", str(N)]) == 0
    out, err = capsys.readouterr()
    index = root / "report" / "index.html"
    parser = ImageSources()
    parser.feed(index.read_text(encoding="utf-8"))
    assert len(parser.sources) == 6 and "one_image.png" in parser.sources
    for src in parser.sources:
        png = index.parent / src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert (root / "report" / "manifest.csv").is_file()
    lines = out.strip().splitlines()
    opened = lines.index("open the report in a browser:")
    assert lines[opened + 1].strip() == index.resolve().as_uri()
    last = "\n".join(lines[opened + 2:])  # the last lines: what to run on your own folder
    for command in ("xraybatch ingest SRC", "xraybatch stats", "xraybatch split xray.zarr",
                    "xraybatch report",
                    "python benchmarks/run.py SRC"):
        assert command in last
    assert f"ingest: done, {N}/{N} images" in err and "\r" not in err


def test_demo_without_matplotlib(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    root = tmp_path / "demo"
    assert main(["demo", str(root), "--n", "12"]) == 0
    out = capsys.readouterr().out
    assert "3/4 stats:" in out and "imbalance ratio" in out
    hint = [line for line in out.splitlines() if "4/4 report" in line]
    assert hint == ["4/4 report: skipped, plotting needs matplotlib: "
                    "pip install 'xraybatch[plot]'"]
    assert not (root / "report").exists()
    assert "xraybatch ingest SRC" in out
