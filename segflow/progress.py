"""A tiny progress bar on stderr (no dependency): counts, rate and time left; silent when not a TTY unless forced.

Example
-------
>>> with Progress(total=3, desc="tiles", enabled=False) as bar:
...     for _ in range(3):
...         bar.update(1)
>>> bar.n
3
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Progress over a known number of units, printed to ``stream`` at most every ``interval`` seconds.

    Parameters
    ----------
    total : int
        Number of units (tiles, images, slides).
    desc : str
        Label printed before the counts.
    enabled : bool or None
        None = only when ``stream`` is a terminal.
    callback : callable, optional
        Called as ``callback(done, total)`` after every update (the Python API's progress hook).
    unit : str
        Unit name for the rate.
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool | None = None, stream: TextIO | None = None,
                 callback: Callable[[int, int], None] | None = None, unit: str = "it",
                 interval: float = 0.2) -> None:
        self.total, self.desc, self.unit, self.interval = int(total), desc, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.callback = callback
        self.n = 0
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, k: int = 1, postfix: str | None = None) -> None:
        """Advance by ``k`` units (and optionally replace the text after the bar)."""
        self.n += k
        if postfix is not None:
            self.postfix = postfix
        if self.callback is not None:
            self.callback(self.n, self.total)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.n >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = (f"\r{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f} {self.unit}/s "
                f"elapsed {_fmt_time(elapsed)} left {_fmt_time(left)} {self.postfix}")
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
