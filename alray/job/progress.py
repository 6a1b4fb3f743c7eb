"""What a running job tells its user on stderr: what it is doing, then a progress bar.

Phase lines (``alray: starting a local Ray``) are printed whenever progress is on; the one-line bar
is drawn only on a terminal. The rate counts rows scored by this run since scoring started, so
Ray's start-up and reused shards do not dilute it, and the ETA follows from it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Phase lines and a bar of shards and rows, rows per second and an ETA.

    Args:
        enabled: print anything at all (``alray.run(..., progress=False)`` turns it off).
        stream: where to print (default stderr); the bar is drawn only if it is a terminal.
        hz: the bar is redrawn at most this many times a second.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, hz: float = 5.0,
                 bar: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = enabled and (self.stream.isatty() if bar is None else bar)
        self.shards = self.shards_done = 0
        self.rows: int | None = None
        self.rows_done = 0
        self.started: float | None = None
        self._drawn = False
        self._last_draw = 0.0
        self._interval = 1.0 / hz

    def say(self, text: str) -> None:
        """Print one phase line, on a line of its own even while the bar is shown."""
        if self.enabled:
            self._end_bar_line()
            self.stream.write(f"alray: {text}\n")
            self.stream.flush()

    def start(self, shards: int, rows: int | None) -> None:
        """Scoring starts now: ``shards`` to score, holding ``rows`` by their footers."""
        self.shards, self.rows = shards, rows
        self.started = time.monotonic()
        self._draw(force=True)

    def update(self, shards: int = 0, rows: int = 0) -> None:
        self.shards_done += shards
        self.rows_done += rows
        self._draw()

    @property
    def rate(self) -> float:
        """Rows per second since scoring started."""
        if self.started is None:
            return 0.0
        return self.rows_done / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        share = self.shards_done / self.shards if self.shards else 1.0
        filled = int(share * 24)
        rows = f"{self.rows_done:,}" + (f"/{self.rows:,}" if self.rows else "")
        text = (f"[{'#' * filled}{'.' * (24 - filled)}] shards {self.shards_done}/{self.shards}"
                f"  rows {rows}  {self.rate:,.0f} rows/s")
        if self.rows and self.rows_done and self.rows_done < self.rows:
            text += f"  ETA {format_seconds((self.rows - self.rows_done) / self.rate)}"
        return text

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar and (force or now - self._last_draw >= self._interval):
            self._last_draw = now
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
            self._drawn = True

    def _end_bar_line(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False

    def close(self) -> None:
        """Draw the bar a last time and end its line."""
        if self.started is not None:
            self._draw(force=True)
        if self.enabled:
            self._end_bar_line()
            self.stream.flush()
