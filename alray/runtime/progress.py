"""A one-line progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Shards and rows done, rows per second; redrawn at most ``hz`` times a second.

    Args:
        shards: shards in the job.
        rows: rows the footers promise (None when unknown).
        stream: where to draw (default stderr); nothing is drawn unless it is a terminal.
    """

    def __init__(self, shards: int, rows: int | None, stream: TextIO | None = None,
                 hz: float = 5.0, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.shards, self.rows = shards, rows
        self.shards_done = self.rows_done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._interval = 1.0 / hz

    def update(self, shards: int = 0, rows: int = 0) -> None:
        self.shards_done += shards
        self.rows_done += rows
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= self._interval:
            self._last_draw = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        share = self.shards_done / self.shards if self.shards else 1.0
        filled = int(share * 24)
        rows = f"{self.rows_done:,}" + (f"/{self.rows:,}" if self.rows else "")
        return (f"[{'#' * filled}{'.' * (24 - filled)}] shards {self.shards_done}/{self.shards}  "
                f"rows {rows}  {self.rows_done / elapsed:,.0f} rows/s")

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
