"""Progress of a long compile on a terminal (issue 14): the stage, and kernels built of total.

The frontend opens a :func:`reporting` scope around a compile; the stages say where they are
through :func:`current` (``current().stage("passes")``, ``current().kernels(3, 12)``), which
outside such a scope is a reporter that does nothing. A line drawn with tqdm appears on stderr
only when stderr is a terminal and the compile has run for :data:`DELAY_S` seconds; it is
erased when the compile ends. ``reporting(False)`` (``quartet-compile --quiet``) and
``QUARTET_QUIET=1`` in the environment silence it. Below every layer, like ``errors.py``: any
layer may report, none needs to know whether anybody shows it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import IO, Iterator

#: seconds a compile runs before its progress is shown
DELAY_S = 2.0
#: seconds between redraws of the elapsed time while no stage reports
TICK_S = 0.5


class Silent:
    """The reporter outside a :func:`reporting` scope, or when progress is off."""

    def stage(self, name: str) -> None:
        pass

    def kernels(self, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class Progress(Silent):
    """One compile's progress line on ``file`` (a terminal), shown after ``delay`` seconds."""

    def __init__(self, file: IO | None = None, delay: float | None = None):
        self._file = file or sys.stderr
        self._delay, self._start = DELAY_S if delay is None else delay, time.monotonic()
        self._stage, self._done, self._total = "starting", 0, None
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def stage(self, name: str) -> None:
        with self._lock:
            self._stage, self._done, self._total = name, 0, None
            self._draw()

    def kernels(self, done: int, total: int) -> None:
        with self._lock:
            self._stage, self._done, self._total = "building kernels", done, total
            self._draw()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def _tick(self) -> None:
        if self._stop.wait(self._delay):
            return
        while not self._stop.is_set():
            with self._lock:
                self._draw()
            self._stop.wait(TICK_S)

    def _draw(self) -> None:
        if self._stop.is_set() or time.monotonic() - self._start < self._delay:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(file=self._file, leave=False, dynamic_ncols=True, mininterval=0,
                             desc=self._stage, delay=1e-6,   # drawn below, once its clock is set
                             bar_format="quartet: {desc}  {elapsed}")
            self._bar.start_t -= time.monotonic() - self._start
        if self._total is None:
            self._bar.bar_format = "quartet: {desc}  {elapsed}"
        else:
            self._bar.bar_format = "quartet: {desc} {n}/{total} {bar} {elapsed}"
            self._bar.total, self._bar.n = self._total, self._done
        self._bar.set_description_str(self._stage, refresh=False)
        self._bar.refresh()


_SILENT = Silent()
_scopes: list[Silent] = [_SILENT]


def wanted(enabled: bool | None = None, file: IO | None = None) -> bool:
    """Whether to show progress: ``enabled`` when given, else when ``file`` (stderr) is a
    terminal and ``QUARTET_QUIET`` is not set."""
    if enabled is not None:
        return enabled
    if os.environ.get("QUARTET_QUIET", "") not in ("", "0"):
        return False
    file = file or sys.stderr
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def reporting(enabled: bool | None = None, file: IO | None = None) -> Iterator[Silent]:
    """A scope whose reports :func:`current` shows (see the module docstring). Nested scopes
    report to the outermost one that shows anything."""
    outer = current()
    reporter = outer if outer is not _SILENT or not wanted(enabled, file) else Progress(file)
    _scopes.append(reporter)
    try:
        yield reporter
    finally:
        _scopes.pop()
        if reporter is not outer:
            reporter.close()


def current() -> Silent:
    """The reporter of the innermost :func:`reporting` scope (a silent one outside any)."""
    return _scopes[-1]
