"""Options of one run of a sweep (resume, shard, progress, pacing) and its stop on signals.

These are properties of a run, not of the scan: the same configuration file serves
every shard and every resumed run, so they come from the command line only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

from .progress import DEFAULT_LOG_INTERVAL, ProgressMode
from .shard import Shard

log = logging.getLogger(__name__)

# Seconds that domains in flight get to finish after SIGINT or SIGTERM before they are
# abandoned. An abandoned domain has no line and is swept again by --resume. A second
# signal abandons them at once.
DEFAULT_STOP_GRACE = 10.0


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Options of one run: resume, shard, progress display, stop grace and connection pacing."""

    resume: bool = False
    shard: Shard | None = None
    progress: ProgressMode = ProgressMode.NONE
    progress_interval: float = DEFAULT_LOG_INTERVAL
    stop_grace: float = DEFAULT_STOP_GRACE
    # New SMTP connections per second over the whole sweep; 0 means no limit.
    connection_rate: float = 0.0


class StopControl:
    """The stop requests of a run: the first signal stops intake, a second abandons the domains in flight."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.immediate = asyncio.Event()
        self.signal_name: str | None = None
        self._installed: list[int] = []

    def request(self, name: str) -> None:
        if self.requested.is_set():
            log.warning("%s again: abandoning the domains in flight now", name)
            self.immediate.set()
            return
        self.signal_name = name
        log.warning("%s received: taking no new domains, finishing the ones in flight (a second signal abandons them)", name)
        self.requested.set()

    def install(self) -> None:
        """Route SIGINT and SIGTERM to ``request`` through the running loop."""
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.add_signal_handler(signum, self.request, signal.Signals(signum).name)
            self._installed.append(signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()
