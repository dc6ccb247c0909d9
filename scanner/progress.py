"""Progress on standard error while a sweep runs.

On a terminal, one status line redrawn in place (a bar when the number of domains is
known, the rate, the time left and counts by status). Elsewhere (a log file, a
journal, a pipe), one plain line every ``interval`` seconds, so logs do not fill with
carriage returns. Nothing at all with ``--quiet``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from typing import TextIO

from .output import Summary

BAR_WIDTH = 24

# Seconds between redraws on a terminal: fast enough to look live, slow enough to cost
# nothing next to the sweep.
TERMINAL_REFRESH = 0.5

# Default seconds between plain progress lines when standard error is not a terminal.
DEFAULT_LOG_INTERVAL = 30.0


class ProgressMode(enum.Enum):
    BAR = "bar"
    LINES = "lines"
    NONE = "none"


def count_lines(path) -> int:
    """Return the number of lines of ``path``, an upper bound on the domains it lists."""
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02}s"
    return f"{seconds}s"


def render(summary: Summary, total: int | None, now: float, bar: bool) -> str:
    """Return one progress line for ``summary``; ``total`` is an estimate of the domains to do, if known."""
    done = summary.domains
    elapsed = max(now - summary.started, 1e-9)
    rate = done / elapsed
    parts = []
    if total:
        fraction = min(done / total, 1.0)
        if bar:
            filled = int(fraction * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
        parts.append(f"{done}/~{total} ({fraction:.0%})")
    else:
        parts.append(f"{done} domains")
    parts.append(f"{rate:.0f}/s")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    parts.append(f"elapsed {_duration(elapsed)}")
    statuses = " ".join(f"{status} {count}" for status, count in summary.statuses.most_common())
    if statuses:
        parts.append(statuses)
    return " ".join(parts)


class Progress:
    """Redraws or logs the sweep's progress while the ``async with`` block runs."""

    def __init__(self, summary: Summary, mode: ProgressMode, stream: TextIO, total: int | None = None, interval: float = DEFAULT_LOG_INTERVAL) -> None:
        self.summary = summary
        self.mode = mode
        self.stream = stream
        self.total = total
        self.interval = TERMINAL_REFRESH if mode is ProgressMode.BAR else interval
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def draw(self) -> None:
        line = render(self.summary, self.total, time.monotonic(), bar=self.mode is ProgressMode.BAR)
        if self.mode is ProgressMode.BAR:
            # \r and "erase to end of line" redraw the same line in place.
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write("mxscan: progress: " + line + "\n")
        self.stream.flush()

    async def __aenter__(self) -> "Progress":
        if self.mode is not ProgressMode.NONE:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.mode is ProgressMode.BAR:
            # Leave the last state on screen and move on, so the summary starts on a fresh line.
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
