"""A small progress reporter for long loops: a bar (or a counter when the total is unknown) with
the rate and the time left, drawn on stderr.

Whether it is drawn (``progress`` argument of the functions that take one):

* ``False``: never; ``True``: always (even when stderr is not a terminal);
* ``None`` (the default, "auto"): only when the stream is a terminal, and not while another bar
  is drawn (a loop inside a loop that shows progress stays quiet).

The environment variable ``SIGNALPROP_PROGRESS=0`` turns every bar off, ``=1`` turns the auto
ones on whatever the stream is. Redraws are throttled (at most one per ``interval`` seconds,
0.1 s by default); a reporter that is off is a no-op object, so an ``update`` per step costs a
method call. Nothing here changes a result.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from typing import IO, Iterable, Iterator, Optional, TypeVar

__all__ = ["ENV", "Progress", "progress_bar", "track", "enabled", "render"]

#: the environment variable: "0" turns progress off everywhere, "1" forces the auto bars on.
ENV = "SIGNALPROP_PROGRESS"

_ACTIVE = [0]   # bars being drawn now (an inner auto bar stays quiet while one is)

T = TypeVar("T")


def _check_flag(progress) -> Optional[bool]:
    if progress is None or isinstance(progress, bool):
        return progress
    raise TypeError(f"progress must be True, False or None (auto), got {progress!r}")


def enabled(progress: Optional[bool] = None, stream: Optional[IO] = None) -> bool:
    """Whether a bar is drawn on ``stream`` (default: stderr) for the flag ``progress`` (see the
    module docstring)."""
    progress = _check_flag(progress)
    env = os.environ.get(ENV, "").strip()
    if progress is False or env == "0":
        return False
    if progress is True:
        return True
    if _ACTIVE[0] > 0:
        return False
    if env == "1":
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real stream
        return False


def _clock(seconds: float) -> str:
    """``MM:SS`` or ``H:MM:SS``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _rate(r: float, unit: str) -> str:
    if r <= 0 or not math.isfinite(r):
        return f"? {unit}/s"
    if r >= 1:
        return f"{r:.3g} {unit}/s"
    return f"{1.0 / r:.3g} s/{unit}"


def render(done: float, total: Optional[float], elapsed: float, desc: str = "", unit: str = "it",
           width: int = 80) -> str:
    """One line of the bar: ``desc: 37% |#####     | 37/100 [00:03<00:05, 11.2 it/s]``, or
    without a total ``desc: 37 it [00:03, 11.2 it/s]``. The time left assumes the rate so far."""
    rate = done / elapsed if elapsed > 0 else 0.0
    head = f"{desc}: " if desc else ""
    if total is None or total <= 0:
        return f"{head}{done:g} {unit} [{_clock(elapsed)}, {_rate(rate, unit)}]"[:width]
    frac = min(1.0, max(0.0, done / total))
    left = (total - done) / rate if rate > 0 else math.inf
    tail = f" {done:g}/{total:g} [{_clock(elapsed)}<{_clock(left)}, {_rate(rate, unit)}]"
    start = f"{head}{int(100 * frac):3d}% |"
    room = width - len(start) - len(tail) - 1
    if room < 5:
        return (start[:-2] + tail)[:width]
    n = int(frac * room)
    return f"{start}{'#' * n}{' ' * (room - n)}|{tail}"


class _Off:
    """The reporter when nothing is drawn: every method does nothing."""

    total = None

    def update(self, n: float = 1) -> None:
        pass

    def write(self, text: str, file: Optional[IO] = None) -> None:
        print(text, file=sys.stdout if file is None else file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class Progress:
    """A bar drawn on ``stream`` (use :func:`progress_bar`, which gives a no-op reporter when
    nothing is to be drawn). ``update(n)`` after each step of ``n`` units; ``close()`` (or the
    ``with`` block's end) draws the final state and ends the line."""

    def __init__(self, total: Optional[float], desc: str = "", unit: str = "it", *,
                 stream: Optional[IO] = None, interval: float = 0.1):
        if total is not None and not (isinstance(total, (int, float)) and total >= 0):
            raise ValueError(f"total must be a number >= 0 or None, got {total!r}")
        if not (isinstance(interval, (int, float)) and interval >= 0):
            raise ValueError(f"interval must be a number >= 0 (seconds), got {interval!r}")
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.done = 0.0
        self.redraws = 0
        self._start = time.monotonic()
        self._last = -math.inf
        self._closed = False
        _ACTIVE[0] += 1
        self._draw(force=True)

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = render(self.done, self.total, now - self._start, self.desc, self.unit,
                      self._width())
        try:
            self.stream.write("\r" + line)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: stop drawing, keep working
            self._closed = True
            _ACTIVE[0] -= 1
            return
        self.redraws += 1

    def update(self, n: float = 1) -> None:
        """``n`` more units done (redrawn at most once per ``interval``)."""
        if self._closed:
            return
        self.done += n
        self._draw()

    def write(self, text: str, file: Optional[IO] = None) -> None:
        """Print the line ``text`` on ``file`` (default stdout) above the bar: the bar's line is
        cleared first and redrawn after, so the two never mix on a terminal."""
        if not self._closed:
            try:
                self.stream.write("\r" + " " * self._width() + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        print(text, file=sys.stdout if file is None else file, flush=True)
        if not self._closed:
            self._draw(force=True)

    def close(self) -> None:
        """Draw the final state and end the line (idempotent)."""
        if self._closed:
            return
        self._draw(force=True)
        if not self._closed:
            self._closed = True
            _ACTIVE[0] -= 1
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: Optional[float], desc: str = "", unit: str = "it", *,
                 progress: Optional[bool] = None, stream: Optional[IO] = None,
                 interval: float = 0.1):
    """A :class:`Progress` on ``stream`` (default stderr) when :func:`enabled` says so, else a
    reporter that does nothing. Use as ``with progress_bar(n, "simulate", progress=flag) as bar:
    ... bar.update(k)``."""
    if not enabled(progress, stream):
        return _Off()
    return Progress(total, desc, unit, stream=stream, interval=interval)


def track(items: Iterable[T], desc: str = "", unit: str = "it", *, total: Optional[int] = None,
          progress: Optional[bool] = None, stream: Optional[IO] = None) -> Iterator[T]:
    """``items`` one by one, with a bar advancing after each (``total``: ``len(items)`` when
    it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress_bar(total, desc, unit, progress=progress, stream=stream) as bar:
        for item in items:
            yield item
            bar.update(1)
