"""Per-address limits for recipient sessions: how many at once, and how often.

The address probe runs once per address and sweep, but the recipient probe needs one
session per domain, because RCPT replies depend on the domain. A provider that hosts
thousands of swept domains would otherwise see thousands of sessions in a burst, so
each address gets its own concurrency limit and a minimum interval between session
starts. The state of an address is dropped once it is idle and its interval has
passed, so memory follows the addresses in use, not all addresses ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class _AddressState:
    __slots__ = ("slots", "next_start", "users")

    def __init__(self, sessions: int) -> None:
        self.slots = asyncio.Semaphore(sessions)
        self.next_start = 0.0
        self.users = 0


class AddressLimiter:
    """At most ``sessions`` sessions open per address, started at most ``rate`` per second.

    A ``rate`` of 0 means no rate limit. Waiting here takes no global connection slot,
    so a slow provider does not stall the sessions to other addresses.
    """

    def __init__(self, sessions: int, rate: float) -> None:
        if sessions < 1:
            raise ValueError(f"sessions per address must be at least 1, got {sessions}")
        if rate < 0:
            raise ValueError(f"rate must not be negative, got {rate}")
        self.sessions = sessions
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._states: dict[str, _AddressState] = {}

    def __len__(self) -> int:
        return len(self._states)

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        """Wait for a session slot to ``address`` and for its next start time."""
        loop = asyncio.get_running_loop()
        state = self._states.get(address)
        if state is None:
            state = self._states[address] = _AddressState(self.sessions)
        state.users += 1
        try:
            async with state.slots:
                # Reserve the next start time before sleeping, so concurrent waiters
                # line up one interval apart instead of all waking at once.
                start_at = max(loop.time(), state.next_start)
                state.next_start = start_at + self.interval
                delay = start_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield
        finally:
            state.users -= 1
            if state.users == 0:
                self._forget_when_idle(address, state, loop)

    def _forget_when_idle(self, address: str, state: _AddressState, loop: asyncio.AbstractEventLoop) -> None:
        if state.users or self._states.get(address) is not state:
            return
        if state.next_start <= loop.time():
            del self._states[address]
        else:
            # A session that starts before then keeps the state; the check runs again.
            loop.call_at(state.next_start, self._forget_when_idle, address, state, loop)
