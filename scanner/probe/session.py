"""One SMTP session with one address: the steps, performed on a ``ProbeConnection``.

A session always runs banner, EHLO (HELO when EHLO is refused) and ends with QUIT.
Between them, as its ``SessionPlan`` requests, it runs STARTTLS with the TLS handshake
and EHLO again over TLS, then the recipient steps: MAIL FROM, RCPT TO (twice with the
catch-all check), RSET. Only a plan made by ``mxscan check --send`` carries a message,
and only then does the session send DATA.

``scanner.smtp.handshake`` decides what each reply means. A failure of STARTTLS or of
the recipient steps is recorded in its own part of the record and does not fail the
address: the plain-text handshake had already completed, which is what a sending MTA
with opportunistic TLS needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import ssl
import time

from ..config import Settings
from ..errors import failure_from_exception
from ..results import (
    Failure,
    Greeting,
    Phase,
    ProbeResult,
    RecipientResult,
    RecipientVerdict,
    ReplyRecord,
    TlsResult,
    TranscriptLine,
)
from ..smtp import handshake
from ..smtp.handshake import Step
from ..smtp.reply import Reply, parse_ehlo_keywords
from ..tls import TrustStore, certificate_info, peer_chain
from .connection import ProbeConnection, elapsed_ms
from .transcript import Transcript

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RecipientPlan:
    """The recipient steps: who sends, to whom, and the optional catch-all address.

    ``message`` is the whole test message (headers and body) for ``mxscan check
    --send``; a sweep never sets it, so a sweep never sends DATA.
    """

    rcpt_address: str
    sender: str = ""
    catch_all_address: str | None = None
    message: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionPlan:
    """What one session does beyond banner, EHLO and QUIT.

    ``tls_hostname`` is sent as SNI. ``certificate_facts`` requests the certificate's
    facts and chain check after the handshake. Recipient sessions leave them to the
    address's probe.
    """

    starttls: bool = True
    tls_hostname: str | None = None
    certificate_facts: bool = True
    recipient: RecipientPlan | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionResult:
    """A finished session: the probe part, and the recipient part when it was planned."""

    probe: ProbeResult
    recipient: RecipientResult | None = None


def reply_record(reply: Reply | None) -> ReplyRecord | None:
    if reply is None:
        return None
    return ReplyRecord(code=reply.code, enhanced=reply.enhanced, text=reply.text)


@dataclasses.dataclass
class _TlsState:
    offered: bool
    attempted: bool = False
    starttls: Reply | None = None
    accepted: bool = False
    handshake_completed: bool = False
    version: str | None = None
    cipher: str | None = None
    chain: list[bytes] = dataclasses.field(default_factory=list)
    ehlo: Reply | None = None
    keywords: dict[str, str] | None = None
    failure: Failure | None = None


@dataclasses.dataclass
class _RecipientState:
    mail_from: Reply | None = None
    rcpt: Reply | None = None
    catch_all_rcpt: Reply | None = None
    rset: Reply | None = None
    data: Reply | None = None
    data_end: Reply | None = None
    verdict: RecipientVerdict | None = None
    failure: Failure | None = None


class _Session:
    """State of one session so far, turned into a ``SessionResult`` at the end."""

    def __init__(self, address: str, port: int, transcript: Transcript | None) -> None:
        self.address = address
        self.port = port
        self.transcript = transcript
        self.phase = Phase.CONNECT
        self.connected = False
        self.banner: Reply | None = None
        self.ehlo: Reply | None = None
        self.helo: Reply | None = None
        self.quit: Reply | None = None
        self.greeting: Greeting | None = None
        self.failure: Failure | None = None
        self.tls: _TlsState | None = None
        self.recipient = _RecipientState()
        self.timings: dict[str, float] = {}
        self._timing_key = Phase.CONNECT.value
        self._phase_started = time.perf_counter()

    def begin(self, phase: Phase, timing_key: str | None = None) -> None:
        self.phase = phase
        self._timing_key = timing_key or phase.value
        self._phase_started = time.perf_counter()

    def end(self) -> None:
        self.timings[self._timing_key] = elapsed_ms(self._phase_started)

    @property
    def keywords(self) -> dict[str, str] | None:
        if self.greeting is Greeting.EHLO and self.ehlo is not None:
            return parse_ehlo_keywords(self.ehlo)
        return None

    @property
    def over_tls(self) -> bool:
        return self.tls is not None and self.tls.handshake_completed

    @property
    def current_keywords(self) -> dict[str, str] | None:
        """The keywords that apply now: those sent over TLS once TLS is up (RFC 3207 section 4.2)."""
        if self.over_tls:
            return self.tls.keywords
        return self.keywords


class SessionRunner:
    """Runs sessions with the sweep's settings; shared by all sessions of a sweep."""

    def __init__(self, settings: Settings, tls_context: ssl.SSLContext, trust_store: TrustStore | None) -> None:
        self.settings = settings
        self.tls_context = tls_context
        self.trust_store = trust_store
        self._ehlo_name = settings.ehlo_name.encode("ascii", "strict")

    async def run(self, address: str, plan: SessionPlan) -> SessionResult:
        settings = self.settings
        timeouts = settings.timeouts
        started = time.perf_counter()
        transcript = None
        if settings.transcript.enabled:
            transcript = Transcript(started, settings.transcript.max_lines, settings.transcript.max_chars)
        session = _Session(address, settings.smtp.port, transcript)

        try:
            session.begin(Phase.CONNECT)
            host_deadline_at = asyncio.get_running_loop().time() + timeouts.host
            connection = await ProbeConnection.open(
                address,
                settings.smtp.port,
                connect_timeout=timeouts.connect,
                host_deadline_at=host_deadline_at,
                host_seconds=timeouts.host,
                max_line_bytes=settings.limits.max_line_bytes,
                max_reply_bytes=settings.limits.max_reply_bytes,
                source_address=settings.smtp.source_address or None,
                transcript=transcript,
            )
            session.end()
            session.connected = True
            async with connection:
                await self._converse(connection, session, plan)
        except Exception as exc:
            session.end()
            if session.failure is None:
                session.failure = failure_from_exception(exc, session.phase)
            log.debug("session %s: %s in %s: %s", address, session.failure.reason.value, session.phase.value, exc)

        session.timings["total"] = elapsed_ms(started)
        return self._result(session, plan)

    # The steps

    async def _converse(self, connection: ProbeConnection, session: _Session, plan: SessionPlan) -> None:
        timeouts = self.settings.timeouts

        session.begin(Phase.BANNER)
        session.banner = await connection.read_reply(Phase.BANNER, timeouts.banner)
        session.end()
        decision = handshake.after_banner(session.banner)

        if decision.step is Step.EHLO:
            session.begin(Phase.EHLO)
            session.ehlo = await connection.command(Phase.EHLO, timeouts.reply, b"EHLO", self._ehlo_name)
            session.end()
            decision = handshake.after_ehlo(session.ehlo)

        if decision.step is Step.HELO:
            session.begin(Phase.HELO)
            session.helo = await connection.command(Phase.HELO, timeouts.reply, b"HELO", self._ehlo_name)
            session.end()
            decision = handshake.after_helo(session.helo)

        session.failure = decision.failure
        session.greeting = decision.greeting
        step = decision.step
        if session.greeting is not None:
            step = await self._after_greeting(connection, session, plan)
        if step is Step.QUIT:
            await self._quit(connection, session)

    async def _after_greeting(self, connection: ProbeConnection, session: _Session, plan: SessionPlan) -> Step:
        step = Step.CONTINUE
        if plan.starttls:
            session.tls = _TlsState(offered=handshake.wants_starttls(session.keywords, True))
            if session.tls.offered:
                step = await self._starttls(connection, session, plan)
        if plan.recipient is not None and step is Step.CONTINUE:
            step = await self._recipient(connection, session, plan.recipient)
        return Step.QUIT if step is Step.CONTINUE else step

    async def _starttls(self, connection: ProbeConnection, session: _Session, plan: SessionPlan) -> Step:
        """STARTTLS, the handshake and EHLO over TLS; every failure goes to ``tls.failure``."""
        tls = session.tls
        timeouts = self.settings.timeouts
        tls.attempted = True
        try:
            session.begin(Phase.STARTTLS)
            tls.starttls = await connection.command(Phase.STARTTLS, timeouts.reply, b"STARTTLS")
            session.end()
            decision = handshake.after_starttls(tls.starttls)
            if decision.step is not Step.TLS:
                tls.failure = decision.failure
                return decision.step
            tls.accepted = True

            session.begin(Phase.TLS)
            ssl_object = await connection.start_tls(self.tls_context, plan.tls_hostname, self.settings.tls.timeout)
            session.end()
            tls.handshake_completed = True
            tls.version = ssl_object.version()
            cipher = ssl_object.cipher()
            tls.cipher = cipher[0] if cipher else None
            if plan.certificate_facts:
                tls.chain = peer_chain(ssl_object)

            session.begin(Phase.EHLO, "ehlo_tls")
            tls.ehlo = await connection.command(Phase.EHLO, timeouts.reply, b"EHLO", self._ehlo_name)
            session.end()
            decision = handshake.after_tls_ehlo(tls.ehlo)
            if decision.greeting is Greeting.EHLO:
                tls.keywords = parse_ehlo_keywords(tls.ehlo)
            tls.failure = decision.failure
            return decision.step
        except Exception as exc:
            session.end()
            tls.failure = failure_from_exception(exc, session.phase)
            log.debug("session %s: STARTTLS ended in %s: %s", session.address, session.phase.value, tls.failure.message)
            return Step.CLOSE

    async def _recipient(self, connection: ProbeConnection, session: _Session, plan: RecipientPlan) -> Step:
        """MAIL FROM, RCPT TO (and the catch-all RCPT), DATA only for check --send, RSET."""
        state = session.recipient
        try:
            return await self._transaction(connection, session, plan)
        except Exception as exc:
            session.end()
            state.failure = failure_from_exception(exc, session.phase)
            log.debug("session %s: recipient probe ended in %s: %s", session.address, session.phase.value, exc)
            return Step.CLOSE

    async def _transaction(self, connection: ProbeConnection, session: _Session, plan: RecipientPlan) -> Step:
        state = session.recipient
        seconds = self.settings.timeouts.reply

        session.begin(Phase.MAIL)
        state.mail_from = await connection.command(Phase.MAIL, seconds, b"MAIL", b"FROM:<" + plan.sender.encode() + b">")
        session.end()
        state.verdict = handshake.verdict_after_mail(state.mail_from)
        if state.verdict is not None:
            return Step.CLOSE if handshake.closes_session(state.mail_from) else Step.QUIT

        parameters = handshake.rcpt_parameters(session.current_keywords)
        session.begin(Phase.RCPT)
        state.rcpt = await connection.command(Phase.RCPT, seconds, b"RCPT", b"TO:<" + plan.rcpt_address.encode() + b">", *parameters)
        session.end()
        state.verdict = handshake.verdict_after_rcpt(state.rcpt)
        if handshake.closes_session(state.rcpt):
            return Step.CLOSE

        if plan.catch_all_address is not None:
            session.begin(Phase.RCPT, "rcpt_catch_all")
            address = plan.catch_all_address.encode()
            state.catch_all_rcpt = await connection.command(Phase.RCPT, seconds, b"RCPT", b"TO:<" + address + b">", *parameters)
            session.end()
            if handshake.closes_session(state.catch_all_rcpt):
                return Step.CLOSE

        if plan.message is not None and state.verdict is RecipientVerdict.ACCEPTED:
            step = await self._data(connection, session, plan.message)
            if step is not Step.CONTINUE:
                return step

        session.begin(Phase.RSET)
        state.rset = await connection.command(Phase.RSET, seconds, b"RSET")
        session.end()
        return Step.CLOSE if handshake.closes_session(state.rset) else Step.QUIT

    async def _data(self, connection: ProbeConnection, session: _Session, message: bytes) -> Step:
        state = session.recipient
        seconds = self.settings.timeouts.reply
        session.begin(Phase.DATA)
        state.data = await connection.command(Phase.DATA, seconds, b"DATA")
        if state.data.code == 354:
            state.data_end = await connection.send_message(seconds, message)
        session.end()
        last = state.data_end or state.data
        return Step.CLOSE if handshake.closes_session(last) else Step.CONTINUE

    async def _quit(self, connection: ProbeConnection, session: _Session) -> None:
        """Send QUIT and wait briefly for the reply; nothing here can fail the address."""
        session.begin(Phase.QUIT)
        try:
            session.quit = await connection.command(Phase.QUIT, self.settings.timeouts.quit, b"QUIT")
        except Exception as exc:
            log.debug("session %s: no reply to QUIT: %s", session.address, exc)
        session.end()

    # The record

    def _tls_result(self, session: _Session, plan: SessionPlan) -> TlsResult | None:
        tls = session.tls
        if tls is None:
            return None
        certificate = None
        trusted, chain_error = None, None
        if tls.chain:
            now = datetime.datetime.now(datetime.timezone.utc)
            try:
                certificate = certificate_info(tls.chain[0], now)
            except ValueError as exc:
                chain_error = f"unparsable certificate: {exc}"
            if self.trust_store is not None and certificate is not None:
                trusted, chain_error = self.trust_store.verify(tls.chain, now)
        elif tls.handshake_completed and plan.certificate_facts:
            chain_error = "the server sent no certificate"
        return TlsResult(
            offered=tls.offered,
            attempted=tls.attempted,
            starttls=reply_record(tls.starttls),
            accepted=tls.accepted,
            handshake_completed=tls.handshake_completed,
            version=tls.version,
            cipher=tls.cipher,
            certificate=certificate,
            chain_trusted=trusted,
            chain_error=chain_error,
            name_matches=None,
            ehlo=reply_record(tls.ehlo),
            keywords=tls.keywords,
            failure=tls.failure,
        )

    def _recipient_result(self, session: _Session, plan: RecipientPlan, transcript: tuple[TranscriptLine, ...] | None) -> RecipientResult:
        state = session.recipient
        verdict = state.verdict
        failure = state.failure
        if verdict is None and session.banner is not None:
            verdict = handshake.verdict_after_banner(session.banner)
        if failure is None and verdict is None:
            failure = session.failure or (session.tls.failure if session.tls else None)
        catch_all = handshake.catch_all_of(state.catch_all_rcpt) if state.catch_all_rcpt is not None else None
        return RecipientResult(
            rcpt_address=plan.rcpt_address,
            sender=plan.sender,
            verdict=verdict or RecipientVerdict.NO_VERDICT,
            mail_from=reply_record(state.mail_from),
            rcpt=reply_record(state.rcpt),
            rset=reply_record(state.rset),
            catch_all=catch_all,
            catch_all_rcpt=reply_record(state.catch_all_rcpt),
            catch_all_address=plan.catch_all_address,
            tls=session.over_tls,
            data=reply_record(state.data),
            data_end=reply_record(state.data_end),
            failure=failure,
            transcript=transcript,
            transcript_dropped=session.transcript.dropped if session.transcript else 0,
        )

    def _result(self, session: _Session, plan: SessionPlan) -> SessionResult:
        transcript = tuple(session.transcript.lines) if session.transcript is not None else None
        probe = ProbeResult(
            address=session.address,
            port=session.port,
            connected=session.connected,
            completed=session.greeting is not None and session.failure is None,
            banner=reply_record(session.banner),
            greeting=session.greeting,
            ehlo=reply_record(session.ehlo),
            helo=reply_record(session.helo),
            keywords=session.keywords,
            quit=reply_record(session.quit),
            timings_ms=session.timings,
            failure=session.failure,
            tls=self._tls_result(session, plan),
            transcript=transcript,
            transcript_dropped=session.transcript.dropped if session.transcript else 0,
        )
        if plan.recipient is None:
            return SessionResult(probe)
        return SessionResult(probe, self._recipient_result(session, plan.recipient, transcript))
