"""One SMTP session with one address: the actions of a ``Dialogue``, performed on a connection.

``scanner.smtp.dialogue`` decides every step and what each reply means. This module
only performs the actions it returns (read, send, TLS handshake, send the test
message, close), times each one, and turns what the dialogue saw into the record.
Only a plan made by ``mxscan check --send`` carries a message, and only then does a
session send DATA.
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
    Phase,
    ProbeResult,
    RecipientResult,
    RecipientVerdict,
    ReplyRecord,
    TlsResult,
    TranscriptLine,
)
from ..smtp import handshake
from ..smtp.dialogue import ActionKind, Dialogue, RecipientPlan, SessionPlan, Timeout
from ..smtp.reply import Reply
from ..tls import TrustStore, certificate_info, peer_chain
from .connection import ProbeConnection, elapsed_ms
from .transcript import Transcript

__all__ = ["RecipientPlan", "SessionPlan", "SessionResult", "SessionRunner", "reply_record"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionResult:
    """A finished session: the probe part, and the recipient part when it was planned."""

    probe: ProbeResult
    recipient: RecipientResult | None = None


def reply_record(reply: Reply | None) -> ReplyRecord | None:
    if reply is None:
        return None
    return ReplyRecord(code=reply.code, enhanced=reply.enhanced, text=reply.text)


class _Session:
    """The I/O side of one session: address, timings, transcript, and the dialogue."""

    def __init__(self, address: str, port: int, dialogue: Dialogue, transcript: Transcript | None) -> None:
        self.address = address
        self.port = port
        self.dialogue = dialogue
        self.transcript = transcript
        self.connected = False
        self.timings: dict[str, float] = {}

    def timed(self, key: str, started: float) -> None:
        self.timings[key] = elapsed_ms(started)


class SessionRunner:
    """Runs sessions with the sweep's settings; shared by all sessions of a sweep."""

    def __init__(self, settings: Settings, tls_context: ssl.SSLContext, trust_store: TrustStore | None) -> None:
        self.settings = settings
        self.tls_context = tls_context
        self.trust_store = trust_store
        self._ehlo_name = settings.ehlo_name.encode("ascii", "strict")
        timeouts = settings.timeouts
        self._seconds = {
            Timeout.BANNER: timeouts.banner,
            Timeout.REPLY: timeouts.reply,
            Timeout.TLS: settings.tls.timeout,
            Timeout.QUIT: timeouts.quit,
        }

    async def run(self, address: str, plan: SessionPlan) -> SessionResult:
        settings = self.settings
        timeouts = settings.timeouts
        started = time.perf_counter()
        transcript = None
        if settings.transcript.enabled:
            transcript = Transcript(started, settings.transcript.max_lines, settings.transcript.max_chars)
        session = _Session(address, settings.smtp.port, Dialogue(self._ehlo_name, plan), transcript)

        try:
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
        except Exception as exc:
            session.timed(Phase.CONNECT.value, started)
            session.dialogue.failure = failure_from_exception(exc, Phase.CONNECT)
            log.debug("session %s: %s: %s", address, session.dialogue.failure.reason.value, exc)
        else:
            session.timed(Phase.CONNECT.value, started)
            session.connected = True
            async with connection:
                await self._perform(connection, session, plan)

        session.timings["total"] = elapsed_ms(started)
        return self._result(session, plan)

    async def _perform(self, connection: ProbeConnection, session: _Session, plan: SessionPlan) -> None:
        """Perform the dialogue's actions until it is done."""
        dialogue = session.dialogue
        action = dialogue.start()
        while action.kind not in (ActionKind.DONE, ActionKind.CLOSE):
            seconds = self._seconds[action.timeout]
            started = time.perf_counter()
            try:
                if action.kind is ActionKind.TLS:
                    ssl_object = await connection.start_tls(self.tls_context, plan.tls_hostname, seconds)
                    session.timed(action.timing, started)
                    cipher = ssl_object.cipher()
                    action = dialogue.tls_established(ssl_object.version(), cipher[0] if cipher else None, peer_chain(ssl_object))
                    continue
                if action.kind is ActionKind.READ:
                    reply = await connection.read_reply(action.phase, seconds)
                elif action.kind is ActionKind.MESSAGE:
                    reply = await connection.send_message(seconds, plan.recipient.message)
                else:
                    reply = await connection.command(action.phase, seconds, *action.args)
            except Exception as exc:
                session.timed(action.timing, started)
                failure = failure_from_exception(exc, action.phase)
                log.debug("session %s: %s in %s: %s", session.address, failure.reason.value, action.phase.value, exc)
                action = dialogue.fail(failure)
                continue
            session.timed(action.timing, started)
            action = dialogue.receive(reply)

    # The record

    def _tls_result(self, session: _Session, plan: SessionPlan) -> TlsResult | None:
        tls = session.dialogue.tls
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
        dialogue = session.dialogue
        state = dialogue.recipient
        verdict = state.verdict
        failure = state.failure
        if verdict is None and dialogue.banner is not None:
            verdict = handshake.verdict_after_banner(dialogue.banner)
        if failure is None and verdict is None:
            failure = dialogue.failure or (dialogue.tls.failure if dialogue.tls else None)
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
            tls=dialogue.over_tls,
            data=reply_record(state.data),
            data_end=reply_record(state.data_end),
            failure=failure,
            transcript=transcript,
            transcript_dropped=session.transcript.dropped if session.transcript else 0,
        )

    def _result(self, session: _Session, plan: SessionPlan) -> SessionResult:
        dialogue = session.dialogue
        transcript = tuple(session.transcript.lines) if session.transcript is not None else None
        probe = ProbeResult(
            address=session.address,
            port=session.port,
            connected=session.connected,
            completed=dialogue.greeting is not None and dialogue.failure is None,
            banner=reply_record(dialogue.banner),
            greeting=dialogue.greeting,
            ehlo=reply_record(dialogue.ehlo),
            helo=reply_record(dialogue.helo),
            keywords=dialogue.keywords,
            quit=reply_record(dialogue.quit),
            timings_ms=session.timings,
            failure=dialogue.failure,
            tls=self._tls_result(session, plan),
            transcript=transcript,
            transcript_dropped=session.transcript.dropped if session.transcript else 0,
        )
        if plan.recipient is None:
            return SessionResult(probe)
        return SessionResult(probe, self._recipient_result(session, plan.recipient, transcript))
