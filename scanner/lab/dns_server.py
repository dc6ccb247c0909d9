"""The lab's authoritative DNS server: one loopback address, UDP and TCP on one port.

``build_reply`` turns the bytes of one query into the bytes of the reply, or into
nothing for a query that gets no reply. It does no I/O, so tests can call it directly.
``DnsAuthority`` is the thin asyncio layer around it: a UDP endpoint and a TCP listener
with RFC 1035 section 4.2.2 framing (a 2-byte length before each message).

dnspython only parses queries and renders replies here. Zone data and its lookups
live in ``scanner.lab.zone``.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from scanner.lab.zone import Behaviour, Zone, name_key, parse_rdata

logger = logging.getLogger(__name__)

# RFC 1035 section 4.2.1: a UDP reply to a query without EDNS fits in 512 bytes.
CLASSIC_UDP_PAYLOAD = 512
# RFC 1035 section 4.2.2: the 2-byte length prefix caps a TCP message at 65,535 bytes.
MAX_TCP_MESSAGE = 65535
DNS_HEADER_SIZE = 12
# EDNS payload size that this server announces in its replies: 1232 bytes, the
# default that DNS Flag Day 2020 chose to avoid IP fragmentation.
SERVER_EDNS_PAYLOAD = 1232

# Seconds before an idle TCP connection is closed. RFC 7766 section 6.2.3 recommends
# that servers close idle connections and suggests timeouts of tens of seconds.
TCP_IDLE_TIMEOUT = 30.0
# Open TCP connections at one time; further clients are disconnected at once so
# that a flood of connections cannot exhaust file descriptors.
MAX_TCP_CONNECTIONS = 1024
TCP_BACKLOG = 512
# Receive buffer requested for the UDP socket, so a burst of queries from a sweep
# with thousands of tasks queues in the kernel instead of being dropped. Linux caps
# the value at net.core.rmem_max.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
# Attempts to find a port that is free for both UDP and TCP when port 0 is requested.
PORT_BIND_ATTEMPTS = 20
# Replies kept for repeated queries. Parsing and rendering with dnspython 2.9 takes
# about 0.35 ms a query (build_reply timed in a loop on a 2-core machine), while a
# sweep queries the addresses of shared lab mail hosts again and again, and
# retries timed-out queries. When full, the cache is emptied and fills again.
REPLY_CACHE_SIZE = 100_000

# Bytes sent by the garbage behaviour: longer than a DNS header, so a client parses
# some of it before it fails.
GARBAGE_SIZE = 64
# Owner of the records sent by the mismatch behaviour. The .invalid TLD never
# exists (RFC 6761 section 6.4), and the addresses are loopback ones, so a client
# that wrongly accepts them still sends no traffic off the machine.
DECOY_OWNER = dns.name.from_text("decoy.invalid.")
_DECOY_VALUES = {
    dns.rdatatype.A: "127.0.0.1",
    dns.rdatatype.AAAA: "::1",
    dns.rdatatype.MX: "10 mx.decoy.invalid.",
}

# Behaviours that replace the reply with an error rcode.
_ERROR_RCODES = {
    Behaviour.SERVFAIL: dns.rcode.SERVFAIL,
    Behaviour.REFUSED: dns.rcode.REFUSED,
    Behaviour.FORMERR: dns.rcode.FORMERR,
}
# Questions that this server refuses: zone transfers (RFC 5936) are not offered.
_REFUSED_TYPES = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


class Transport(str, enum.Enum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True)
class Reply:
    """The bytes to send for one query message, and the facts to count about it."""

    # None: send nothing.
    wire: bytes | None
    # (name key, type mnemonic) of the question, when the query parsed.
    question: tuple[str, str] | None = None
    malformed: bool = False
    # Whether the same query bytes after the ID always get this reply (with their
    # own ID) while the zone stays unchanged. Random garbage does not.
    cacheable: bool = False


def build_reply(zone: Zone, wire: bytes, transport: Transport) -> Reply:
    """Build the reply to the query message ``wire`` received over ``transport``.

    A query that dnspython cannot parse gets a bare FORMERR header when its header is
    complete, and no reply otherwise. A message with QR set is a response and never
    gets a reply, so that two servers cannot reply to each other in a loop.
    """
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError) as error:
        logger.debug("malformed %s query of %d bytes: %s", transport.value, len(wire), error)
        return Reply(_formerr_header(wire), malformed=True)

    if query.flags & dns.flags.QR:
        return Reply(None, malformed=True)

    response = dns.message.make_response(query, our_payload=SERVER_EDNS_PAYLOAD)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return Reply(_render(response, query, transport))
    # RFC 6891 section 6.1.3: an EDNS version above the supported 0 gets BADVERS.
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
        return Reply(_render(response, query, transport))
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return Reply(_render(response, query, transport))

    question = query.question[0]
    counted = (name_key(question.name), dns.rdatatype.to_text(question.rdtype))
    if question.rdclass != dns.rdataclass.IN or question.rdtype in _REFUSED_TYPES:
        response.set_rcode(dns.rcode.REFUSED)
        return Reply(_render(response, query, transport), counted)

    behaviour = zone.behaviour(question.name)
    if behaviour is Behaviour.DROP:
        return Reply(None, counted, cacheable=True)
    if behaviour is Behaviour.GARBAGE:
        return Reply(_garbage(query.id), counted)
    if behaviour in _ERROR_RCODES:
        response.set_rcode(_ERROR_RCODES[behaviour])
        return Reply(_render(response, query, transport), counted, cacheable=True)

    response.flags |= dns.flags.AA
    if behaviour is Behaviour.TRUNCATE and transport is Transport.UDP:
        response.flags |= dns.flags.TC
    elif behaviour is Behaviour.EMPTY:
        response.authority = list(zone.negative_soa(question.name))
    elif behaviour is Behaviour.MISMATCH:
        response.answer = [_decoy_rrset(zone, question.name, question.rdtype)]
    else:
        answer = zone.resolve(question.name, question.rdtype)
        response.set_rcode(answer.rcode)
        response.answer = list(answer.answer)
        response.authority = list(answer.authority)
    return Reply(_render(response, query, transport), counted, cacheable=True)


def udp_payload_limit(query: dns.message.Message) -> int:
    """Return the largest UDP reply that the client of ``query`` accepts.

    RFC 6891 section 6.2.5: a requestor's payload size below 512 is treated as 512.
    """
    if query.edns < 0:
        return CLASSIC_UDP_PAYLOAD
    return min(max(query.payload, CLASSIC_UDP_PAYLOAD), MAX_TCP_MESSAGE)


def _render(
    response: dns.message.Message, query: dns.message.Message, transport: Transport
) -> bytes:
    """Render ``response``; one too large for the limit is sent empty with TC set.

    A truncated reply drops every record, so the client retries over TCP (RFC 7766
    section 5) instead of using a partial RRset. Records keep the zone's order,
    because dnspython shuffles the rdatas of an RRset unless ``want_shuffle`` is
    False, and the lab's tests and benchmarks need replies that repeat.
    """
    limit = udp_payload_limit(query) if transport is Transport.UDP else MAX_TCP_MESSAGE
    try:
        return response.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, want_shuffle=False)


def _formerr_header(wire: bytes) -> bytes | None:
    """Return a FORMERR header for an unparsable query, or None to send nothing.

    RFC 1035 section 4.1.1: the reply keeps the ID, opcode and RD bit of the query.
    Without a whole header there is no ID to echo, and a message with QR set is a
    response, which gets no reply.
    """
    if len(wire) < DNS_HEADER_SIZE or wire[2] & 0x80:
        return None
    opcode_and_rd = wire[2] & 0x79
    flags = bytes([0x80 | opcode_and_rd, dns.rcode.FORMERR])
    return wire[:2] + flags + bytes(8)


def _garbage(query_id: int) -> bytes:
    """Return random bytes whose first two, read as a message ID, differ from the query's."""
    data = bytearray(os.urandom(GARBAGE_SIZE))
    if int.from_bytes(data[:2], "big") == query_id:
        data[0] ^= 0xFF
    return bytes(data)


def _decoy_rrset(zone: Zone, qname: dns.name.Name, qtype: int) -> dns.rrset.RRset:
    """Return the zone's records for the question, or made-up ones, owned by DECOY_OWNER."""
    try:
        rdatas = zone.rdatas(qname, qtype)
    except ValueError:
        # A query-only type such as ANY or TKEY has no stored values.
        rdatas = []
    if not rdatas:
        rdtype = qtype if qtype in _DECOY_VALUES else dns.rdatatype.A
        rdatas = [parse_rdata(rdtype, _DECOY_VALUES[rdtype])]
    return dns.rrset.from_rdata_list(DECOY_OWNER, zone.ttl, rdatas)


def _check_loopback(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid host {host!r}: expected a loopback IP address") from None
    if not address.is_loopback:
        raise ValueError(
            f"invalid host {host!r}: the lab binds only to loopback addresses (127.0.0.0/8, ::1)"
        )


class DnsAuthority:
    """The lab's authoritative DNS server for ``zone`` on one loopback address.

    UDP and TCP share one port; port 0 picks one that is free for both. The server
    counts queries per (name key, type mnemonic) in ``query_counts`` and per transport
    in ``transport_counts``; ``reset_counts`` clears them.
    """

    def __init__(
        self,
        zone: Zone,
        host: str = "127.0.53.1",
        port: int = 0,
        *,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        _check_loopback(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}: expected 0 to 65535")
        self.zone = zone
        self.host = host
        self.port = port
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections

        self.query_counts: Counter[tuple[str, str]] = Counter()
        self.transport_counts: Counter[str] = Counter()
        self.malformed_count = 0

        self._requested_port = port
        # (transport, query bytes after the ID) -> reply, valid for _cache_version.
        self._reply_cache: dict[tuple[Transport, bytes], Reply] = {}
        self._cache_version = zone.version
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._connections: set[_TcpConnection] = set()

    @property
    def address(self) -> str:
        """The server as ``HOST:PORT``, with IPv6 hosts in brackets, as c-ares takes it."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def reset_counts(self) -> None:
        self.query_counts.clear()
        self.transport_counts.clear()
        self.malformed_count = 0

    async def start(self) -> None:
        """Bind UDP and TCP on ``host`` and start serving. Raises OSError if binding fails."""
        if self._udp_transport is not None:
            raise RuntimeError(f"DNS authority on {self.address} is already started")
        loop = asyncio.get_running_loop()

        udp_socket, tcp_socket = self._bind_sockets()
        self.port = udp_socket.getsockname()[1]
        self._tcp_server = await loop.create_server(
            lambda: _TcpConnection(self), sock=tcp_socket
        )
        self._udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpEndpoint(self), sock=udp_socket
        )
        logger.info("lab DNS authority started on %s (udp and tcp)", self.address)

    def _bind_sockets(self) -> tuple[socket.socket, socket.socket]:
        """Bind a UDP and a listening TCP socket on the same port.

        With port 0 the kernel picks a free UDP port, which can be taken for TCP;
        then another pair is tried, up to PORT_BIND_ATTEMPTS times.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for attempt in range(1, PORT_BIND_ATTEMPTS + 1):
            udp_socket = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
                udp_socket.bind((self.host, self._requested_port))
                port = udp_socket.getsockname()[1]
            except OSError:
                udp_socket.close()
                raise

            tcp_socket = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp_socket.bind((self.host, port))
                tcp_socket.listen(TCP_BACKLOG)
            except OSError as error:
                tcp_socket.close()
                udp_socket.close()
                if self._requested_port != 0 or error.errno != errno.EADDRINUSE:
                    raise
                logger.debug(
                    "TCP port %d on %s is taken (attempt %d), trying another",
                    port, self.host, attempt,
                )
                continue

            udp_socket.setblocking(False)
            tcp_socket.setblocking(False)
            return udp_socket, tcp_socket

        raise OSError(
            errno.EADDRINUSE,
            f"no port on {self.host} was free for both UDP and TCP "
            f"after {PORT_BIND_ATTEMPTS} attempts",
        )

    async def stop(self) -> None:
        """Close the sockets and every open TCP connection. Calling it twice is harmless."""
        if self._udp_transport is None and self._tcp_server is None:
            return
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None

        tcp_server = self._tcp_server
        self._tcp_server = None
        if tcp_server is not None:
            tcp_server.close()
            for connection in list(self._connections):
                connection.close()
            await tcp_server.wait_closed()
        logger.info(
            "lab DNS authority on %s stopped after %d queries (%s), %d malformed",
            self.address,
            self.transport_counts.total(),
            dict(self.transport_counts),
            self.malformed_count,
        )

    async def __aenter__(self) -> DnsAuthority:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def handle(self, wire: bytes, transport: Transport) -> bytes | None:
        """Count one received message and return the reply to send, if any."""
        self.transport_counts[transport.value] += 1
        reply = self._cached_reply(wire, transport)
        if reply is not None:
            self.query_counts[reply.question] += 1  # type: ignore[index]
            return None if reply.wire is None else wire[:2] + reply.wire[2:]

        try:
            reply = build_reply(self.zone, wire, transport)
        except Exception:
            # A bug in this server must not stop the lab in the middle of a sweep:
            # log it, count the query as malformed and send nothing.
            logger.exception(
                "failed to build the reply to a %d-byte %s query on %s",
                len(wire), transport.value, self.address,
            )
            self.malformed_count += 1
            return None

        if reply.question is not None:
            self.query_counts[reply.question] += 1
        if reply.malformed:
            self.malformed_count += 1
        if reply.cacheable and len(wire) >= DNS_HEADER_SIZE:
            if len(self._reply_cache) >= REPLY_CACHE_SIZE:
                self._reply_cache.clear()
            self._reply_cache[(transport, wire[2:])] = reply
        return reply.wire

    def _cached_reply(self, wire: bytes, transport: Transport) -> Reply | None:
        if self._cache_version != self.zone.version:
            self._reply_cache.clear()
            self._cache_version = self.zone.version
            return None
        return self._reply_cache.get((transport, wire[2:]))


class _UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, authority: DnsAuthority) -> None:
        self._authority = authority
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._authority.handle(data, Transport.UDP)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # Linux reports an ICMP port unreachable from an earlier sendto here, when a
        # client gave up and closed its socket. It concerns no current query.
        logger.debug("UDP error on %s: %s", self._authority.address, exc)


class _TcpConnection(asyncio.Protocol):
    """One TCP client: several length-prefixed queries, closed after an idle timeout.

    After each read the receive buffer contains at most one incomplete message
    (2 + 65,535 bytes), because every complete message gets its reply at once. When the client
    stops reading replies, reading pauses until asyncio's write buffer drains.
    """

    def __init__(self, authority: DnsAuthority) -> None:
        self._authority = authority
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        authority = self._authority
        if len(authority._connections) >= authority.max_tcp_connections:
            logger.warning(
                "closing a TCP connection to %s: %d connections are open already",
                authority.address, len(authority._connections),
            )
            self._transport.abort()
            return
        authority._connections.add(self)
        self._restart_idle_timer()

    def data_received(self, data: bytes) -> None:
        # NOTE: the idle timer restarts on every read, so a client that sends one
        # byte at a time keeps its connection, but its buffer stays bounded.
        self._restart_idle_timer()
        self._buffer += data

        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + length:
                break
            message = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]

            reply = self._authority.handle(message, Transport.TCP)
            if self._transport is None or self._transport.is_closing():
                return
            if reply is not None:
                self._transport.write(len(reply).to_bytes(2, "big") + reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._authority._connections.discard(self)
        self._buffer.clear()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _restart_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._authority.tcp_idle_timeout, self._close_idle)

    def _close_idle(self) -> None:
        self._idle_timer = None
        logger.debug(
            "closing TCP connection to %s after %.1f s idle",
            self._authority.address, self._authority.tcp_idle_timeout,
        )
        self.close()
