"""A lab world served from a background thread, for tests that run mxscan as a process.

The lab's servers need a running event loop. A test that starts ``mxscan`` with
``subprocess`` has no loop of its own to lend, so ``BackgroundLab`` runs one in a
daemon thread until ``stop``. Use it as a context manager.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from .world import Lab

# Seconds to wait for the lab to start or stop before the test fails.
START_STOP_TIMEOUT = 30.0


class BackgroundLab:
    """A ``Lab`` running on its own event loop in a daemon thread."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.lab = Lab.from_dict(world)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lab", daemon=True)

    def _call(self, coroutine) -> Any:
        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=START_STOP_TIMEOUT)

    def start(self) -> "BackgroundLab":
        self._thread.start()
        self._call(self.lab.start())
        return self

    def stop(self) -> None:
        try:
            self._call(self.lab.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=START_STOP_TIMEOUT)
            self._loop.close()

    def connections(self) -> dict[str, int]:
        """Return the connections each lab host has accepted, by address."""
        return {host.address: host.connections for host in self.lab.hosts}

    def __enter__(self) -> "BackgroundLab":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
