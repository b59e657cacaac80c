"""Progress display: whole lines when stderr is captured, a live bar on a terminal, the same
lines for local schedulers and a distributed cluster."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

import xraybatch
from xraybatch.cli import main
from xraybatch.progress import Progress

START = re.compile(r"^ingest: started, (\d+) images$")
STEP = re.compile(r"^ingest: \d+/\d+ images \(\d+%\), \d+ images/s, "
                  r"(\d+ h \d+ min|\d+ min \d+ s|\d+ s) left$")
END = re.compile(r"^ingest: done, (\d+)/(\d+) images in [\d.]+ s \(\d+ images/s\)$")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def plain(total: int, steps: list[tuple[float, int]]) -> list[str]:
    """The lines written for ``advance(n)`` at each (time, n), stream not a terminal."""
    clock, out = Clock(), io.StringIO()
    bar = Progress(out, clock=clock).start(total)
    for t, n in steps:
        clock.now = t
        bar.advance(n)
    bar.close()
    return out.getvalue().splitlines()


def assert_plain(text: str, total: int) -> None:
    """Whole lines only: a start line, steps, a done line."""
    assert "\r" not in text and text.endswith("\n")
    lines = [line for line in text.splitlines() if line.startswith("ingest:")]
    assert START.match(lines[0]).group(1) == str(total)
    assert END.match(lines[-1]).groups() == (str(total), str(total))
    for line in lines[1:-1]:
        assert STEP.match(line), line


def test_a_line_per_tenth() -> None:
    lines = plain(1000, [(t, 10) for t in range(1, 101)])  # 10 images a second
    assert len(lines) == 11  # start, 10 % ... 90 %, done
    assert lines[1] == "ingest: 100/1000 images (10%), 10 images/s, 1 min 30 s left"
    assert lines[-1] == "ingest: done, 1000/1000 images in 100.0 s (10 images/s)"
    assert_plain("\n".join(lines) + "\n", 1000)


def test_a_line_every_ten_seconds_when_slow() -> None:
    lines = plain(10_000, [(t, 1) for t in range(0, 61, 5)])  # < 1 % a minute
    assert [line.split(",")[0] for line in lines[1:-1]] == [
        "ingest: 3/10000 images (0%)", "ingest: 5/10000 images (0%)",
        "ingest: 7/10000 images (0%)", "ingest: 9/10000 images (0%)",
        "ingest: 11/10000 images (0%)", "ingest: 13/10000 images (0%)"]
    assert lines[-1] == "ingest: stopped at 13/10000 images after 60.0 s"


def test_live_bar_on_a_terminal() -> None:
    out = Terminal()
    with Progress(out).start(64) as bar:
        assert bar.live
        bar.advance(32)
        bar.advance(32)
    text = out.getvalue()
    assert text.startswith("\ringest [") and "64/64 images (100%)" in text
    assert text.endswith("\n") and END.match(text.splitlines()[-1])


def test_cli_ingest_captured(capsys, synth_small: Path, tmp_path: Path) -> None:
    """stderr is not a terminal under capsys: no carriage return, a start and an end line."""
    code = main(["ingest", str(synth_small), str(tmp_path / "x.zarr"), "--size", "32",
                 "--chunk", "4"])
    out, err = capsys.readouterr()
    assert code == 0
    assert_plain(err, 60)
    assert len(err.splitlines()) <= 12
    assert re.fullmatch(f"next: .*xraybatch stats {tmp_path / 'x.zarr'} --by split, then "
                        f".*xraybatch report {tmp_path / 'x.zarr'} --out {tmp_path / 'x-report'}"
                        r" \(figures and index.html\)", out.splitlines()[-1])
    code = main(["ingest", str(synth_small), str(tmp_path / "q.zarr"), "--size", "32",
                 "--quiet"])
    assert code == 0 and capsys.readouterr().err == ""


def test_distributed_same_lines(capsys, synth_small: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as client:
        result = xraybatch.ingest(synth_small, tmp_path / "x.zarr", size=32, chunk=8,
                                  scheduler=client, progress=True)
    assert result.n_stored == 60
    assert_plain(capsys.readouterr().err, 60)
