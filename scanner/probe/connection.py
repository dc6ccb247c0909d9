"""The one place where mxscan opens, reads, writes and closes SMTP connections.

``ProbeConnection`` wraps aiosmtplib's protocol class. aiosmtplib keeps its command
lock and its write path, which rejects control characters in commands. The reply
framing is replaced by ``scanner.smtp.reply.ReplyReader``, so that line and reply caps,
bare LF and blank lines behave as the rest of mxscan expects.

STARTTLS is split in two steps, unlike aiosmtplib's ``start_tls``: the command and its
reply (``command``), then the handshake (``start_tls``) with its own deadline, so the
record can tell a refused STARTTLS from a failed or slow handshake.

Every wait has a deadline that mxscan sets itself. aiosmtplib's own timeout covers
one read, so a server that drips a byte at a time can keep a session alive for as
long as it likes; here each phase ends at ``min(phase deadline, host deadline)``,
measured on the event loop's clock, however the bytes arrive.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

from aiosmtplib.protocol import SMTPProtocol

from ..errors import ConnectionClosed, HostDeadline, PhaseTimeout
from ..results import Phase
from ..smtp.reply import Reply, ReplyError, ReplyReader
from .transcript import Transcript

log = logging.getLogger(__name__)


class ProbeProtocol(SMTPProtocol):
    """aiosmtplib's protocol with mxscan's bounded reply framing."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_line_bytes: int, max_reply_bytes: int, transcript: Transcript | None = None
    ) -> None:
        super().__init__(loop=loop)
        on_line = transcript.server if transcript is not None else None
        self.reader = ReplyReader(max_line_bytes=max_line_bytes, max_reply_bytes=max_reply_bytes, on_line=on_line)

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if waiter is None or not self._response_pending or waiter.done():
            # Bytes that no command requested: dropping them keeps a late reply from being
            # taken as the answer to the next command.
            return

        self.reader.feed(data)
        try:
            reply = self.reader.next_reply()
        except ReplyError as exc:
            self.reader.clear()
            self._set_response_exception(waiter, exc)
            return
        if reply is not None:
            # mxscan never pipelines, so whatever follows a complete reply was not asked for.
            self.reader.clear()
            waiter.set_result(reply)

    def eof_received(self) -> bool:
        waiter = self._response_waiter
        if waiter is not None and not waiter.done():
            self._set_response_exception(waiter, ConnectionClosed("server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        waiter = self._response_waiter
        if waiter is not None and not waiter.done():
            # Keep the operating system's error (a reset, say) instead of aiosmtplib's
            # generic "connection lost", so the reason table can tell them apart. After
            # QUIT, aiosmtplib would invent a 221 reply; mxscan records that none came.
            self._set_response_exception(waiter, exc or ConnectionClosed("server closed the connection"))
        super().connection_lost(exc)


class ProbeConnection:
    """One SMTP session with one address, bounded by a host deadline.

    Create it with ``open``; it is closed by ``close`` or ``abort``, and ``async with``
    closes it on any exit, cancellation included.
    """

    def __init__(
        self,
        protocol: ProbeProtocol,
        transport: asyncio.Transport,
        host_deadline_at: float,
        host_seconds: float,
        transcript: Transcript | None = None,
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host_deadline_at = host_deadline_at
        self.host_seconds = host_seconds
        self.transcript = transcript
        self.ssl_object: ssl.SSLObject | None = None

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        host_deadline_at: float,
        host_seconds: float,
        max_line_bytes: int,
        max_reply_bytes: int,
        source_address: str | None = None,
        transcript: Transcript | None = None,
    ) -> "ProbeConnection":
        loop = asyncio.get_running_loop()
        protocol = ProbeProtocol(loop, max_line_bytes, max_reply_bytes, transcript)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        local_addr = (source_address, 0) if source_address else None
        connect = loop.create_connection(lambda: protocol, host=address, port=port, family=family, local_addr=local_addr)
        transport, _ = await run_within(connect, Phase.CONNECT, connect_timeout, host_deadline_at, host_seconds)
        return cls(protocol, transport, host_deadline_at, host_seconds, transcript)

    async def read_reply(self, phase: Phase, seconds: float) -> Reply:
        return await run_within(self.protocol.read_response(), phase, seconds, self.host_deadline_at, self.host_seconds)

    async def command(self, phase: Phase, seconds: float, *args: bytes) -> Reply:
        if self.transcript is not None:
            self.transcript.client(b" ".join(args))
        return await run_within(
            self.protocol.execute_command(*args), phase, seconds, self.host_deadline_at, self.host_seconds
        )

    async def send_message(self, seconds: float, message: bytes) -> Reply:
        """Send a message body after a 354 reply to DATA and return the final reply.

        The body is dot-stuffed and ended with CRLF.CRLF (RFC 5321 section 4.5.2).
        Only ``mxscan check --send`` calls this; a sweep never sends DATA.
        """
        lines = message.replace(b"\r\n", b"\n").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
        if self.transcript is not None:
            for line in stuffed:
                self.transcript.client(line)
            self.transcript.client(b".")
        payload = b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"
        protocol = self.protocol
        assert protocol._command_lock is not None

        async def exchange() -> Reply:
            async with protocol._command_lock:
                protocol._response_pending = True
                protocol.write(payload)
                return await protocol.read_response()

        return await run_within(exchange(), Phase.DATA, seconds, self.host_deadline_at, self.host_seconds)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, seconds: float) -> ssl.SSLObject:
        """Run the TLS handshake on this connection, after the server's 220 to STARTTLS.

        The phase deadline is mxscan's own; the event loop's ``ssl_handshake_timeout``
        is set a little later as a backstop only. On any error the connection is
        closed by the event loop and cannot be used again. Returns the SSL object,
        which gives the negotiated version, cipher and the server's certificates.
        """
        loop = asyncio.get_running_loop()
        # RFC 3207 section 4.2: nothing the server sent before the handshake may be
        # taken as part of the TLS session.
        self.protocol.reader.clear()
        upgrade = loop.start_tls(
            self.transport,
            self.protocol,
            context,
            server_side=False,
            server_hostname=server_hostname,
            ssl_handshake_timeout=seconds + _HANDSHAKE_BACKSTOP_SECONDS,
        )
        tls_transport = await run_within(upgrade, Phase.TLS, seconds, self.host_deadline_at, self.host_seconds)
        self.transport = tls_transport
        # aiosmtplib's protocol writes through its own transport attribute.
        self.protocol.transport = tls_transport
        self.protocol._over_ssl = True
        ssl_object = tls_transport.get_extra_info("ssl_object")
        if ssl_object is None:
            raise RuntimeError("the event loop's TLS transport has no ssl_object")
        self.ssl_object = ssl_object
        return ssl_object

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    async def __aenter__(self) -> "ProbeConnection":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()


# How long after mxscan's own TLS deadline the event loop's handshake timeout fires;
# it only matters if mxscan's deadline somehow did not end the handshake.
_HANDSHAKE_BACKSTOP_SECONDS = 5.0


async def run_within(awaitable, phase: Phase, seconds: float, host_deadline_at: float, host_seconds: float):
    """Await ``awaitable`` until the phase's deadline or the host's, whichever is first.

    Raises ``PhaseTimeout`` or ``HostDeadline`` naming which one ran out.
    """
    loop = asyncio.get_running_loop()
    phase_deadline_at = loop.time() + seconds
    deadline_at = min(phase_deadline_at, host_deadline_at)
    timeout = asyncio.timeout_at(deadline_at)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if not timeout.expired():
            raise
        if host_deadline_at <= phase_deadline_at:
            raise HostDeadline(host_seconds) from None
        raise PhaseTimeout(phase, seconds) from None


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
