"""Progress of a run: a live bar on a terminal, a few whole lines anywhere else.

A captured stream (a CI log, a notebook, ``| tee``) gets plain lines only, at the start, about
every 10 % or 10 s, and at the end, never carriage-return fragments. :class:`Progress` only
counts what it is told: whatever loop learns that work finished calls
:meth:`Progress.advance` (:func:`dask_callback` does it for Dask's local schedulers), so
every scheduler shows the same output.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TextIO


class Progress:
    """Items done, items per second and time left, written to ``stream`` (default: stderr).

    Parameters
    ----------
    stream
        Where to write; resolved when the object is made, so a redirected ``sys.stderr``
        counts.
    live
        Redraw one line in place (default: when ``stream`` is a terminal).
    label, unit
        The words of each line: ``"ingest: 120/240 images ..."``.
    every
        Seconds after which a plain line is written even if no 10 % step was crossed.
    clock
        Seconds as a float (``time.monotonic``); tests pass their own.

    Examples
    --------
    >>> import io
    >>> ticks = iter([0.0, 2.0, 4.0, 4.0])
    >>> out = io.StringIO()
    >>> bar = Progress(out, live=False, clock=lambda: next(ticks))
    >>> _ = bar.start(200)
    >>> bar.advance(100)
    >>> bar.advance(100)
    >>> bar.close()
    >>> print(out.getvalue(), end="")
    ingest: started, 200 images
    ingest: 100/200 images (50%), 50 images/s, 2 s left
    ingest: done, 200/200 images in 4.0 s (50 images/s)
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 label: str = "ingest", unit: str = "images", every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.live = _isatty(self.stream) if live is None else live
        self.label, self.unit, self.every, self.clock = label, unit, every, clock
        self.total = self.done = 0
        self.t0 = self.last_line = 0.0
        self.step = 0  # tenths reported so far (plain lines)
        self.width = 0  # of the live line last drawn
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.ticker: threading.Thread | None = None

    def start(self, total: int) -> Progress:
        """Begin counting towards ``total`` items; returns itself (``with bar.start(n):``)."""
        self.total, self.done, self.step, self.width = total, 0, 0, 0
        self.t0 = self.last_line = self.clock()
        self.stopped.clear()
        if not self.live:
            self._line(f"started, {total} {self.unit}")
            return self
        self._draw()
        # The clock moves even while no task finishes (a first chunk, a slow cluster).
        self.ticker = threading.Thread(target=self._tick, name="xraybatch-progress", daemon=True)
        self.ticker.start()
        return self

    def advance(self, n: int) -> None:
        """``n`` more items are done (any thread may call it)."""
        with self.lock:
            self.done += n
            if self.live:
                return  # the ticker draws
            now = self.clock()
            step = 10 * self.done // self.total if self.total else 10
            if self.done < self.total and (step > self.step or now - self.last_line >= self.every):
                self.step, self.last_line = step, now
                self._line(self._status(now))

    def close(self) -> None:
        """Write the last line: how long it took, or where it stopped."""
        if self.ticker is not None:
            self.stopped.set()
            self.ticker.join()
            self.ticker = None
        with self.lock:
            now = self.clock()
            if self.live:
                self._draw(now, final=True)
            seconds = now - self.t0
            rate = f"{self.done / seconds:.0f} {self.unit}/s" if seconds > 0 else "-"
            if self.done >= self.total:
                end = f"done, {self.done}/{self.total} {self.unit} in {seconds:.1f} s ({rate})"
            else:
                end = f"stopped at {self.done}/{self.total} {self.unit} after {seconds:.1f} s"
            self._line(end)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- output ---------------------------------------------------------------------------

    def _status(self, now: float) -> str:
        seconds = now - self.t0
        percent = 100 * self.done // self.total if self.total else 100
        text = f"{self.done}/{self.total} {self.unit} ({percent}%)"
        if self.done and seconds > 0:
            rate = self.done / seconds
            text += f", {rate:.0f} {self.unit}/s"
            if self.done < self.total:
                text += f", {_duration((self.total - self.done) / rate)} left"
        return text

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()

    def _draw(self, now: float | None = None, final: bool = False) -> None:
        """Redraw the live line in place; the final one ends with a newline."""
        now = self.clock() if now is None else now
        columns = shutil.get_terminal_size().columns - 1  # never wrap: \r redraws one line
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        text = self._status(now)
        bar_width = max(10, min(30, columns - len(self.label) - len(text) - 6))
        filled = round(bar_width * fraction)
        line = f"{self.label} [{'#' * filled}{' ' * (bar_width - filled)}] {text}"[:columns]
        pad = " " * max(0, self.width - len(line))
        self.width = len(line)
        self.stream.write(f"\r{line}{pad}" + ("\n" if final else ""))
        self.stream.flush()

    def _tick(self, interval: float = 0.25) -> None:
        while not self.stopped.wait(interval):
            with self.lock:
                self._draw()


def dask_callback(progress: Progress, count: Callable[[Any], int],
                  keys: Collection[Any] | None = None):
    """A Dask callback (local schedulers) that advances ``progress`` by ``count(result)``
    for every finished task (of ``keys`` only, if given: a callback sees every computation
    that runs in the process meanwhile).

    Examples
    --------
    >>> import dask, io
    >>> bar = Progress(io.StringIO(), live=False)
    >>> _ = bar.start(3)
    >>> with dask_callback(bar, count=len):
    ...     _ = dask.compute(dask.delayed(list)("abc"), scheduler="sync")
    >>> bar.done
    3
    """
    from dask.callbacks import Callback

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if keys is None or key in keys:
            progress.advance(count(result))

    return Callback(posttask=posttask)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    """``7 s``, ``4 min 05 s``, ``2 h 03 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
