"""A progress line for long passes: rows done, rows per second and ETA, at most every `every` seconds."""

from __future__ import annotations

import logging
import time


class Progress:
    """Call `advance(rows)` per batch; logs `<label>: 1.2M/9.8M rows (12%), 3.1M rows/s, ETA 3 s`."""

    def __init__(self, label: str, total: int | None, logger: logging.Logger, every: float = 10.0):
        self.label, self.total, self.log, self.every = label, total, logger, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {_human(self.done)}"
        if self.total:
            text += f"/{_human(self.total)} rows ({self.done / self.total:.0%})"
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f", {_human(rate)} rows/s, ETA {eta:.0f} s"
        else:
            text += f" rows, {_human(rate)} rows/s"
        return text


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"
