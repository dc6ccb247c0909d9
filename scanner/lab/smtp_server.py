"""Lab SMTP server: one asyncio server on one 127.x address that plays a behaviour.

Each connection runs as one task on asyncio streams, with no threads. The replies
to commands come from :class:`scanner.lab.behaviours.SmtpDialogue`. This module
does the I/O around it: delays, framing, STARTTLS and the DATA body. It also plays
the hostile greetings that are pure I/O (drip, long line, endless banner, RST,
HTTP).

Hostile sessions that run "forever" read and discard client input at the same
time, and end when the client closes, when the client stays silent for the
behaviour's ``idle_timeout``, or when :meth:`SmtpHost.stop` cancels them.

For tests, a host counts accepted connections and DATA commands, and keeps the
commands of its last :data:`MAX_SESSIONS_KEPT` sessions.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from scanner.lab.behaviours import (
    MAX_COMMAND_LINE,
    Action,
    Behaviour,
    Greeting,
    Reply,
    SmtpDialogue,
)

log = logging.getLogger(__name__)

# Sessions kept for inspection, oldest dropped first. Benchmarks make thousands of
# sessions a second, so the history is a bounded window.
MAX_SESSIONS_KEPT = 1000
# Commands kept per session; later ones are counted in commands_dropped.
MAX_COMMANDS_KEPT = 200

# StreamReader limit: the longest line the server buffers. RFC 5321 section
# 4.5.3.1.6 limits a text line to 1000 octets, but real mail often has longer
# lines in DATA, so the limit is 64 KiB. A longer command line ends the session.
READ_LIMIT = 64 * 1024

# A closing session waits this long for its unsent replies to drain to a client
# that stopped reading, then aborts the connection.
CLOSE_TIMEOUT = 5.0

TLS_HANDSHAKE_TIMEOUT = 10.0

# endless_multiline writes this many lines before it waits for the client to read
# them and yields to other sessions.
ENDLESS_BATCH_LINES = 64

# http reads at most this many header lines of a request.
MAX_HTTP_HEADER_LINES = 100

_HTTP_REQUEST_LINE = re.compile(r"^[A-Z]{3,10} \S+ HTTP/1\.[01]$")

# SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class SessionRecord:
    """The commands of one client session, kept for tests.

    ``commands`` contains the first :data:`MAX_COMMANDS_KEPT` lines received outside
    DATA, decoded as UTF-8 with undecodable bytes escaped, without line endings.
    """

    peer: str
    started: float = field(default_factory=time.monotonic)
    commands: list[str] = field(default_factory=list)
    commands_dropped: int = 0
    tls: bool = False
    ended: bool = False

    def add_command(self, line: str) -> None:
        if len(self.commands) < MAX_COMMANDS_KEPT:
            self.commands.append(line[:MAX_COMMAND_LINE])
        else:
            self.commands_dropped += 1


class SmtpHost:
    """A lab SMTP server for one host name, bound to ``address``:``port``.

    ``port=0`` picks a free port, readable as :attr:`port` after :meth:`start`.
    Any other port is bound exactly, so many hosts on different 127.x addresses
    can share one port number. ``tls`` is the server SSLContext that STARTTLS
    uses. Without it the server does not offer STARTTLS, unless the behaviour
    advertises it on purpose, as ``starttls_454`` and ``tls_garbage`` do.
    """

    def __init__(
        self,
        address: str,
        port: int = 0,
        hostname: str = "mx.lab.test",
        behaviour: Behaviour | None = None,
        tls: ssl.SSLContext | None = None,
        *,
        backlog: int = 1024,
    ) -> None:
        self.address = address
        self.hostname = hostname
        self.behaviour = behaviour if behaviour is not None else Behaviour()
        self.tls = tls
        self.backlog = backlog
        self.connections = 0
        self.data_commands = 0
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._sessions: collections.deque[SessionRecord] = collections.deque(maxlen=MAX_SESSIONS_KEPT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False
        # Seeded, so tls_garbage sends the same bytes on every run.
        self._random = random.Random(f"{address}:{hostname}")

    @property
    def port(self) -> int:
        """The bound port; the requested port before :meth:`start`."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return self._server.sockets[0].getsockname()[1]

    @property
    def sessions(self) -> list[SessionRecord]:
        """The last :data:`MAX_SESSIONS_KEPT` sessions, oldest first."""
        return list(self._sessions)

    async def start(self) -> None:
        """Bind and start accepting; raise OSError if the address is taken."""
        if self._server is not None:
            raise RuntimeError(f"lab SMTP host {self.hostname} is already running")
        self._stopping = False
        self._server = await asyncio.start_server(
            self._handle_connection,
            host=self.address,
            port=self._requested_port,
            limit=READ_LIMIT,
            backlog=self.backlog,
            reuse_address=True,
        )
        log.info(
            "lab SMTP host %s listening on %s port %d with behaviour %s",
            self.hostname,
            self.address,
            self.port,
            self.behaviour.name,
        )

    async def stop(self) -> None:
        """Stop accepting, abort every open session and wait for their tasks to end."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()

        # A connection accepted just before close() may start its task while
        # the others are being cancelled, so repeat until none is left.
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        await server.wait_closed()

        self._server = None
        log.info(
            "lab SMTP host %s on %s stopped after %d connections",
            self.hostname,
            self.address,
            self.connections,
        )

    async def __aenter__(self) -> SmtpHost:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        peer = writer.get_extra_info("peername")
        session = SessionRecord(peer=f"{peer[0]}:{peer[1]}" if peer else "unknown")
        self._sessions.append(session)

        # The handler task must not end cancelled: Python 3.11's StreamReaderProtocol
        # calls task.exception() on it when it ends, which raises CancelledError
        # inside a loop callback. Cancellation comes from stop() or loop shutdown,
        # and both only need the connection gone.
        try:
            await self._play(session, reader, writer)
        except (OSError, EOFError, TimeoutError, asyncio.LimitOverrunError) as error:
            # Includes ssl.SSLError and ConnectionResetError: the client's doing.
            log.debug("lab SMTP host %s: session from %s ended: %r", self.hostname, session.peer, error)
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception:
            # A bug in the lab must not take down the other sessions.
            log.exception("lab SMTP host %s: session from %s failed", self.hostname, session.peer)

        session.ended = True
        try:
            await self._close(writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close after unsent data drains, or abort at stop() or after CLOSE_TIMEOUT."""
        if self._stopping or writer.transport.is_closing():
            writer.transport.abort()
            return
        writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()

    async def _play(self, session: SessionRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        behaviour = self.behaviour
        if behaviour.banner_delay:
            await asyncio.sleep(behaviour.banner_delay)

        greeting = behaviour.greeting
        if greeting is Greeting.CLOSE:
            return
        if greeting is Greeting.RESET:
            _reset(writer)
            return
        if greeting is Greeting.NONE:
            await self._discard_input(session, reader)
        elif greeting is Greeting.DRIP:
            await self._hold(session, reader, self._drip(writer))
        elif greeting is Greeting.LONG_LINE:
            await self._hold(session, reader, self._send_long_line(writer))
        elif greeting is Greeting.ENDLESS:
            await self._hold(session, reader, self._send_endless_banner(writer))
        elif greeting is Greeting.HTTP:
            await self._answer_http(session, reader, writer)
        else:
            await self._run_dialogue(session, reader, writer)

    async def _run_dialogue(
        self, session: SessionRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        behaviour = self.behaviour
        dialogue = SmtpDialogue(behaviour, self.hostname, tls_available=self.tls is not None)

        step = dialogue.greeting()
        await self._send(writer, step.reply)
        if step.action is Action.CLOSE:
            return

        while True:
            line = await self._read_line(reader, writer)
            if line is None:
                return
            session.add_command(line)
            words = line.split(maxsplit=1)
            if words and words[0].upper() == "DATA":
                self.data_commands += 1

            step = dialogue.receive_line(line)
            if step.reply is not None and behaviour.per_reply_delay:
                await asyncio.sleep(behaviour.per_reply_delay)

            action = step.action
            if action is Action.HALF_REPLY_THEN_CLOSE:
                assert step.reply is not None
                lines = step.reply.encode_lines(bare_lf=behaviour.bare_lf, blank_lines=behaviour.blank_lines)
                writer.write(b"".join(lines[: max(1, len(lines) // 2)]))
                await writer.drain()
                return

            await self._send(writer, step.reply)
            if action is Action.CLOSE:
                return
            if action is Action.HOLD:
                await self._discard_input(session, reader)
                return
            if action is Action.SEND_GARBAGE:
                # Wait for the ClientHello, so the garbage reaches the client's TLS
                # layer and not the plaintext buffer it read the 220 reply into.
                async with asyncio.timeout(self.behaviour.idle_timeout):
                    if not await reader.read(READ_LIMIT):
                        return
                await self._hold(session, reader, self._send_garbage(writer))
                return
            if action is Action.START_TLS:
                assert self.tls is not None
                # NOTE: plaintext pipelined after STARTTLS stays in the reader's
                # buffer and is read as the first command after the handshake.
                # A hardened server discards it, because it allows command injection.
                await writer.start_tls(self.tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
                dialogue.tls_started()
                session.tls = True
            elif action is Action.READ_DATA:
                size, too_long = await self._read_message(reader)
                step = dialogue.receive_message(size, too_long=too_long)
                if behaviour.per_reply_delay:
                    await asyncio.sleep(behaviour.per_reply_delay)
                await self._send(writer, step.reply)

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply | None) -> None:
        if reply is None:
            return
        writer.write(reply.encode(bare_lf=self.behaviour.bare_lf, blank_lines=self.behaviour.blank_lines))
        await writer.drain()

    async def _read_line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """Read one command line; return None at end of input or after an idle timeout.

        A line longer than :data:`READ_LIMIT` gets 500 and ends the session, since
        the reader cannot find where the next command starts. An idle timeout gets
        421 (RFC 5321 section 4.5.3.2.7).
        """
        try:
            return await self._receive_line(reader)
        except asyncio.LimitOverrunError:
            await self._send(writer, Reply.single(500, "5.5.2 Line too long"))
        except TimeoutError:
            await self._send(writer, Reply.single(421, f"4.4.2 {self.hostname} Idle timeout, closing"))
        return None

    async def _receive_line(self, reader: asyncio.StreamReader) -> str | None:
        """Read one line without its ending; return None at end of input.

        Raise TimeoutError after idle_timeout and LimitOverrunError for a line
        longer than :data:`READ_LIMIT`.
        """
        try:
            async with asyncio.timeout(self.behaviour.idle_timeout):
                raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        return raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")

    async def _read_message(self, reader: asyncio.StreamReader) -> tuple[int, bool]:
        """Read and discard a DATA body up to the line ``.`` (RFC 5321 section 4.1.1.4).

        Return the body size in bytes and whether a line was longer than
        :data:`READ_LIMIT`; such a line is discarded in pieces.
        """
        size = 0
        too_long = False
        while True:
            try:
                async with asyncio.timeout(self.behaviour.idle_timeout):
                    raw = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                size += len(await reader.readexactly(error.consumed))
                too_long = True
                continue
            if raw in (b".\r\n", b".\n"):
                return size, too_long
            size += len(raw)

    async def _discard_input(self, session: SessionRecord, reader: asyncio.StreamReader) -> None:
        """Record and drop client lines until end of input or an idle timeout."""
        while True:
            try:
                line = await self._receive_line(reader)
            except asyncio.LimitOverrunError as error:
                await reader.readexactly(error.consumed)
                continue
            except TimeoutError:
                return
            if line is None:
                return
            session.add_command(line)

    async def _hold(self, session: SessionRecord, reader: asyncio.StreamReader, sender: Awaitable[None]) -> None:
        """Run ``sender`` while discarding input; stop both when either ends."""
        send_task = asyncio.ensure_future(sender)
        read_task = asyncio.ensure_future(self._discard_input(session, reader))
        try:
            done, _ = await asyncio.wait((send_task, read_task), return_when=asyncio.FIRST_COMPLETED)
            if send_task in done:
                # The sender finished (long_line, tls_garbage): keep the socket
                # open until the client leaves.
                send_task.result()
                await read_task
        finally:
            for task in (send_task, read_task):
                task.cancel()
            await asyncio.gather(send_task, read_task, return_exceptions=True)

    async def _drip(self, writer: asyncio.StreamWriter) -> None:
        """Send a banner one byte per drip_interval without ever ending the line."""
        banner = f"220 {self.hostname} ESMTP mxscan lab, one byte at a time".encode()
        filler = b" ..."
        position = 0
        while True:
            if position < len(banner):
                byte = banner[position : position + 1]
            else:
                offset = (position - len(banner)) % len(filler)
                byte = filler[offset : offset + 1]
            writer.write(byte)
            await writer.drain()
            position += 1
            await asyncio.sleep(self.behaviour.drip_interval)

    async def _send_long_line(self, writer: asyncio.StreamWriter) -> None:
        """Send ``220 `` and then long_line_bytes of text with no line ending."""
        writer.write(b"220 ")
        remaining = self.behaviour.long_line_bytes
        chunk = b"x" * 65536
        while remaining > 0:
            writer.write(chunk[:remaining])
            remaining -= len(chunk)
            await writer.drain()

    async def _send_endless_banner(self, writer: asyncio.StreamWriter) -> None:
        """Send 220- continuation lines until cancelled."""
        number = 0
        interval = self.behaviour.line_interval
        while True:
            lines = []
            for _ in range(ENDLESS_BATCH_LINES):
                number += 1
                lines.append(f"220-{self.hostname} banner line {number}\r\n".encode())
            writer.write(b"".join(lines))
            await writer.drain()
            await asyncio.sleep(interval)

    async def _send_garbage(self, writer: asyncio.StreamWriter) -> None:
        """Send random bytes where the client expects a TLS ServerHello."""
        writer.write(self._random.randbytes(self.behaviour.garbage_bytes))
        await writer.drain()

    async def _answer_http(
        self, session: SessionRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Reply like an HTTP/1.1 server: 200 to a request, 400 to anything else.

        A timeout or an overlong line ends the session without a response.
        """
        line = await self._receive_line(reader)
        if line is None:
            return
        session.add_command(line)

        if _HTTP_REQUEST_LINE.match(line):
            for _ in range(MAX_HTTP_HEADER_LINES):
                header = await self._receive_line(reader)
                if not header:
                    break
            status, body = "200 OK", b"<html><body>mxscan lab web server</body></html>\n"
        else:
            status, body = "400 Bad Request", b"Bad Request\n"

        head = (
            f"HTTP/1.1 {status}\r\n"
            "Server: mxscan-lab\r\n"
            "Content-Type: text/html\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            "\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()
