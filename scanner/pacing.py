"""A sweep-wide rate limit on new SMTP connections.

The prober bounds the connections open at once and, for recipient sessions, the
sessions and their rate per address. This adds a bound on how fast new connections
start over the whole sweep, for a scanner whose network or whose neighbours should
not see thousands of SYNs in one second. Waiting happens before the session's host
deadline starts, so a slow pace never shows up as a server's timeout.
"""

from __future__ import annotations

import asyncio


class ConnectionPacer:
    """Spaces connection starts at least ``1 / rate`` seconds apart."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"connection rate must be positive, got {rate}")
        self.interval = 1.0 / rate
        self._next_start = 0.0
        self.waited = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Reserve the start time before sleeping, so concurrent callers line up one
        # interval apart instead of waking together.
        start_at = max(now, self._next_start)
        self._next_start = start_at + self.interval
        if start_at > now:
            self.waited += start_at - now
            await asyncio.sleep(start_at - now)


class PacedRunner:
    """A session runner that waits for the pacer before each session it starts."""

    def __init__(self, runner, pacer: ConnectionPacer) -> None:
        self._runner = runner
        self.pacer = pacer

    async def run(self, address: str, plan):
        await self.pacer.wait()
        return await self._runner.run(address, plan)

    def __getattr__(self, name: str):
        return getattr(self._runner, name)
