"""The README: its figures are in the repository, and its two set-up commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIGURES = ROOT / "benchmarks" / "figures"


def test_figures_exist_and_are_referenced() -> None:
    referenced = re.findall(r"\]\((benchmarks/figures/[^)\s]+\.png)\)", README)
    committed = sorted(p.relative_to(ROOT).as_posix() for p in FIGURES.glob("*.png"))
    assert len(referenced) >= 3 and sorted(set(referenced)) == committed
    opening = README.split("\n## ", 1)[0]  # the title and introduction
    assert all(ref in opening for ref in referenced)
    for ref in referenced:
        assert (ROOT / ref).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", ref
    assert sum((ROOT / ref).stat().st_size for ref in committed) < 600_000


def test_two_set_up_commands_and_ci() -> None:
    set_up = README.split("\n## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", set_up, re.S)
    assert len(commands) == 2
    assert commands[0].startswith("python3 -m venv .venv && .venv/bin/pip install '.[plot]'")
    assert commands[0].endswith(".venv/bin/xraybatch demo")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()  # .ci/run runs the second one verbatim
