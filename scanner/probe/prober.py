"""The probe stage: one bounded SMTP handshake per address, at most once per sweep.

The handshake is banner, EHLO (HELO when EHLO is refused), QUIT. ``scanner.smtp.handshake``
decides what each reply means and what comes next; this module performs the steps on a
``ProbeConnection`` and turns whatever goes wrong into a ``Failure`` through the one
table in ``scanner.errors``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..config import Settings
from ..errors import failure_from_exception
from ..results import Failure, Greeting, Phase, ProbeResult, Reason, ReplyRecord
from ..smtp.handshake import Step, after_banner, after_ehlo, after_helo
from ..smtp.reply import Reply, parse_ehlo_keywords
from .connection import ProbeConnection, elapsed_ms

log = logging.getLogger(__name__)


def reply_record(reply: Reply | None) -> ReplyRecord | None:
    if reply is None:
        return None
    return ReplyRecord(code=reply.code, enhanced=reply.enhanced, text=reply.text)


class _Session:
    """What one handshake has seen so far; becomes a ``ProbeResult`` at the end."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.phase = Phase.CONNECT
        self.connected = False
        self.banner: Reply | None = None
        self.ehlo: Reply | None = None
        self.helo: Reply | None = None
        self.quit: Reply | None = None
        self.greeting: Greeting | None = None
        self.failure: Failure | None = None
        self.timings: dict[str, float] = {}
        self._phase_started = time.perf_counter()

    def begin(self, phase: Phase) -> None:
        self.phase = phase
        self._phase_started = time.perf_counter()

    def end(self) -> None:
        self.timings[self.phase.value] = elapsed_ms(self._phase_started)

    def result(self, started: float) -> ProbeResult:
        self.timings["total"] = elapsed_ms(started)
        keywords = parse_ehlo_keywords(self.ehlo) if self.greeting is Greeting.EHLO and self.ehlo else None
        return ProbeResult(
            address=self.address,
            port=self.port,
            connected=self.connected,
            completed=self.greeting is not None and self.failure is None,
            banner=reply_record(self.banner),
            greeting=self.greeting,
            ehlo=reply_record(self.ehlo),
            helo=reply_record(self.helo),
            keywords=keywords,
            quit=reply_record(self.quit),
            timings_ms=self.timings,
            failure=self.failure,
        )


class Prober:
    """Runs handshakes with a bound on open connections and a per-sweep cache by address."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ehlo_name = settings.ehlo_name.encode("ascii", "strict")
        self._slots = asyncio.Semaphore(settings.connection_limit)
        self._cache: dict[str, asyncio.Future[ProbeResult]] = {}
        self.connections = 0

    def probe(self, address: str) -> "asyncio.Future[ProbeResult]":
        """Return the probe of ``address``, starting it unless another domain already has."""
        future = self._cache.get(address)
        if future is None:
            future = asyncio.ensure_future(self._probe_guarded(address))
            self._cache[address] = future
        return asyncio.shield(future)

    async def _probe_guarded(self, address: str) -> ProbeResult:
        async with self._slots:
            self.connections += 1
            try:
                return await self.handshake(address)
            except Exception as exc:  # a bug must become this address's record, not a dead sweep
                log.exception("probe of %s failed inside mxscan", address)
                failure = failure_from_exception(exc, Phase.SCANNER)
                return ProbeResult(address=address, port=self.settings.smtp.port, connected=False, completed=False, failure=failure)

    async def handshake(self, address: str) -> ProbeResult:
        settings = self.settings
        timeouts = settings.timeouts
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        host_deadline_at = loop.time() + timeouts.host
        session = _Session(address, settings.smtp.port)

        try:
            session.begin(Phase.CONNECT)
            connection = await ProbeConnection.open(
                address,
                settings.smtp.port,
                connect_timeout=timeouts.connect,
                host_deadline_at=host_deadline_at,
                host_seconds=timeouts.host,
                max_line_bytes=settings.limits.max_line_bytes,
                max_reply_bytes=settings.limits.max_reply_bytes,
                source_address=settings.smtp.source_address or None,
            )
            session.end()
            session.connected = True
            async with connection:
                await self._converse(connection, session)
        except Exception as exc:
            session.end()
            if session.failure is None:
                session.failure = failure_from_exception(exc, session.phase)
            log.debug("probe %s: %s in %s: %s", address, session.failure.reason.value, session.phase.value, exc)

        return session.result(started)

    async def _converse(self, connection: ProbeConnection, session: _Session) -> None:
        timeouts = self.settings.timeouts

        session.begin(Phase.BANNER)
        session.banner = await connection.read_reply(Phase.BANNER, timeouts.banner)
        session.end()
        decision = after_banner(session.banner)

        if decision.step is Step.EHLO:
            session.begin(Phase.EHLO)
            session.ehlo = await connection.command(Phase.EHLO, timeouts.reply, b"EHLO", self._ehlo_name)
            session.end()
            decision = after_ehlo(session.ehlo)

        if decision.step is Step.HELO:
            session.begin(Phase.HELO)
            session.helo = await connection.command(Phase.HELO, timeouts.reply, b"HELO", self._ehlo_name)
            session.end()
            decision = after_helo(session.helo)

        session.failure = decision.failure
        session.greeting = decision.greeting
        if decision.step is Step.QUIT:
            await self._quit(connection, session)

    async def _quit(self, connection: ProbeConnection, session: _Session) -> None:
        """Send QUIT and wait briefly for the reply; nothing here can fail the address."""
        session.begin(Phase.QUIT)
        try:
            session.quit = await connection.command(Phase.QUIT, self.settings.timeouts.quit, b"QUIT")
        except Exception as exc:
            log.debug("probe %s: no reply to QUIT: %s", session.address, exc)
        session.end()


def skipped(reason: Reason, message: str) -> Failure:
    return Failure(phase=Phase.POLICY, reason=reason, message=message)
