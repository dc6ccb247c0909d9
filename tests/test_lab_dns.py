"""Tests of the lab DNS authority: real queries over loopback, under asyncio and uvloop.

Each server runs in a background thread with its own event loop, so the blocking
``dns.query.udp`` and ``dns.query.tcp`` calls of a test cannot stall it. Every query
names the server's 127.0.53.x address and port: nothing here reads /etc/resolv.conf.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import aiodns
import aiodns.error
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.lab.dns_server import (
    CLASSIC_UDP_PAYLOAD,
    DECOY_OWNER,
    GARBAGE_SIZE,
    DnsAuthority,
    Transport,
    build_reply,
)
from scanner.lab.zone import MAX_CNAME_CHAIN, Behaviour, Zone

pytestmark = pytest.mark.timeout(30)

# Seconds a client waits for a reply that should arrive; replies on loopback take
# milliseconds, so only a broken server comes near this.
REPLY_TIMEOUT = 2.0
# Seconds a client waits before concluding that no reply will come (drop behaviour).
SILENCE_TIMEOUT = 0.3
MANY_MX_COUNT = 60

LAB_DATA = {
    "records": {
        "normal.test": {"MX": ["10 mx1.normal.test.", "20 mx2.normal.test."]},
        "mx1.normal.test": {"A": ["127.0.25.1"], "AAAA": ["::1"]},
        "mx2.normal.test": {"A": ["127.0.25.2"]},
        "nullmx.test": {"MX": ["0 ."]},
        "alias.test": {"CNAME": ["normal.test."]},
        "dangling.test": {"CNAME": ["missing.test."]},
        "loop1.test": {"CNAME": ["loop2.test."]},
        "loop2.test": {"CNAME": ["loop1.test."]},
        "txt.test": {"TXT": ['"v=spf1 -all"']},
        "host.deep.example": {"A": ["127.0.25.3"]},
        "many.test": {
            "MX": [f"{index} mx{index}.many.test." for index in range(MANY_MX_COUNT)]
        },
        "trunc.test": {"MX": ["10 mx1.normal.test."]},
        "mismatch.test": {"MX": ["10 mx1.normal.test."]},
        "noanswer.test": {"MX": ["10 mx1.normal.test."]},
    },
    "behaviours": {
        "servfail.test": "servfail",
        "refused.test": "refused",
        "silent.test": "drop",
        "trunc.test": "truncate",
        "mismatch.test": "mismatch",
        "noanswer.test": "empty",
        "formerr.test": "formerr",
        "garbage.test": "garbage",
    },
    "ttl": 300,
}

# Built once: hypothesis runs its examples against one zone, and building the zone
# takes longer than one reply.
FUZZ_ZONE = Zone.from_dict(LAB_DATA)

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def zone() -> Zone:
    return Zone.from_dict(LAB_DATA)


@contextlib.contextmanager
def running_authority(
    zone: Zone, host: str, loop_kind: str, **options: object
) -> Iterator[DnsAuthority]:
    """Run a DnsAuthority in a background thread on an event loop of ``loop_kind``."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        server = DnsAuthority(zone, host=host, **options)  # type: ignore[arg-type]
        try:
            await server.start()
        except BaseException as error:
            state["error"] = error
            ready.set()
            return
        stop = asyncio.Event()
        state.update(server=server, stop=stop, loop=asyncio.get_running_loop())
        ready.set()
        await stop.wait()
        await server.stop()

    def run() -> None:
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
            runner.run(serve())

    thread = threading.Thread(target=run, name=f"dns-{host}", daemon=True)
    thread.start()
    assert ready.wait(REPLY_TIMEOUT), "the DNS authority did not start"
    if "error" in state:
        thread.join(REPLY_TIMEOUT)
        raise state["error"]  # type: ignore[misc]

    try:
        yield state["server"]  # type: ignore[misc]
    finally:
        loop: asyncio.AbstractEventLoop = state["loop"]  # type: ignore[assignment]
        loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
        thread.join(REPLY_TIMEOUT)
        assert not thread.is_alive(), "the DNS authority did not stop"


def udp_query(
    server: DnsAuthority, name: str, rdtype: str, **make_query_options: object
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **make_query_options)  # type: ignore[arg-type]
    return dns.query.udp(query, server.host, port=server.port, timeout=REPLY_TIMEOUT)


def tcp_query(server: DnsAuthority, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.tcp(query, server.host, port=server.port, timeout=REPLY_TIMEOUT)


def answer_texts(response: dns.message.Message) -> list[str]:
    """Return the records of the answer section as 'owner TYPE rdata' lines, in wire order."""
    return [
        f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
        for rrset in response.answer
        for rdata in rrset
    ]


def has_soa_authority(response: dns.message.Message) -> bool:
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)


def send_raw_udp(server: DnsAuthority, payload: bytes, timeout: float) -> bytes | None:
    """Send raw bytes to the server and return the reply datagram, or None on timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        client.sendto(payload, (server.host, server.port))
        try:
            return client.recv(65535)
        except TimeoutError:
            return None


def recv_exact(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def framed_query(name: str, rdtype: str) -> bytes:
    """Return a query with the 2-byte length prefix that DNS over TCP uses."""
    return dns.message.make_query(name, rdtype).to_wire(prepend_length=True)


def recv_tcp_message(client: socket.socket) -> dns.message.Message:
    (length,) = struct.unpack("!H", recv_exact(client, 2))
    return dns.message.from_wire(recv_exact(client, length))


# Answers and negative answers


def test_mx_order_and_values(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.1", loop_kind) as server:
        responses = [
            udp_query(server, "normal.test", "MX"),
            tcp_query(server, "normal.test", "MX"),
        ]
        for response in responses:
            assert response.rcode() == dns.rcode.NOERROR
            assert response.flags & dns.flags.AA
            assert answer_texts(response) == [
                "normal.test. MX 10 mx1.normal.test.",
                "normal.test. MX 20 mx2.normal.test.",
            ]
            assert response.answer[0].ttl == 300


def test_address_and_text_types(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.2", loop_kind) as server:
        assert answer_texts(udp_query(server, "mx1.normal.test", "A")) == [
            "mx1.normal.test. A 127.0.25.1"
        ]
        assert answer_texts(udp_query(server, "mx1.normal.test", "AAAA")) == [
            "mx1.normal.test. AAAA ::1"
        ]
        assert answer_texts(udp_query(server, "txt.test", "TXT")) == [
            'txt.test. TXT "v=spf1 -all"'
        ]
        assert answer_texts(udp_query(server, "nullmx.test", "MX")) == ["nullmx.test. MX 0 ."]


def test_apex_soa_and_ns(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.3", loop_kind) as server:
        soa = udp_query(server, "test", "SOA")
        assert answer_texts(soa) == [
            "test. SOA ns1.test. hostmaster.test. 1 3600 600 86400 300"
        ]
        assert answer_texts(udp_query(server, "test.", "NS")) == ["test. NS ns1.test."]
        assert answer_texts(udp_query(server, "example", "NS")) == ["example. NS ns1.example."]


def test_nxdomain_vs_nodata(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.4", loop_kind) as server:
        missing = udp_query(server, "missing.test", "MX")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert missing.flags & dns.flags.AA
        assert missing.answer == []
        assert has_soa_authority(missing)

        nodata = udp_query(server, "mx1.normal.test", "MX")
        assert nodata.rcode() == dns.rcode.NOERROR
        assert nodata.flags & dns.flags.AA
        assert nodata.answer == []
        assert has_soa_authority(nodata)


def test_empty_non_terminal_is_nodata(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.5", loop_kind) as server:
        response = udp_query(server, "deep.example", "A")
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer == []
        assert has_soa_authority(response)


def test_names_are_case_insensitive(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.6", loop_kind) as server:
        response = udp_query(server, "NoRmAl.TeSt.", "MX")
        assert response.rcode() == dns.rcode.NOERROR
        assert len(response.answer[0]) == 2
        assert server.query_counts[("normal.test", "MX")] == 1


def test_cname_chain_then_target(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.7", loop_kind) as server:
        response = tcp_query(server, "alias.test", "MX")
        assert answer_texts(response) == [
            "alias.test. CNAME normal.test.",
            "normal.test. MX 10 mx1.normal.test.",
            "normal.test. MX 20 mx2.normal.test.",
        ]
        assert answer_texts(udp_query(server, "alias.test", "CNAME")) == [
            "alias.test. CNAME normal.test."
        ]

        dangling = udp_query(server, "dangling.test", "A")
        assert dangling.rcode() == dns.rcode.NXDOMAIN
        assert answer_texts(dangling) == ["dangling.test. CNAME missing.test."]


def test_cname_loop_terminates(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.8", loop_kind) as server:
        response = udp_query(server, "loop1.test", "A")
        assert response.rcode() == dns.rcode.NOERROR
        assert answer_texts(response) == [
            "loop1.test. CNAME loop2.test.",
            "loop2.test. CNAME loop1.test.",
        ]


def test_cname_chain_is_capped() -> None:
    zone = Zone()
    for index in range(MAX_CNAME_CHAIN * 2):
        zone.add(f"hop{index}.test", "CNAME", f"hop{index + 1}.test.")
    zone.add(f"hop{MAX_CNAME_CHAIN * 2}.test", "A", "127.0.25.9")

    answer = zone.resolve(dns.name.from_text("hop0.test."), dns.rdatatype.A)

    assert answer.rcode == dns.rcode.NOERROR
    assert len(answer.answer) == MAX_CNAME_CHAIN
    assert all(rrset.rdtype == dns.rdatatype.CNAME for rrset in answer.answer)


# Behaviours


@pytest.mark.parametrize(
    ("name", "rcode"),
    [
        ("servfail.test", dns.rcode.SERVFAIL),
        ("refused.test", dns.rcode.REFUSED),
        ("formerr.test", dns.rcode.FORMERR),
    ],
)
def test_error_behaviours(zone: Zone, loop_kind: str, name: str, rcode: dns.rcode.Rcode) -> None:
    with running_authority(zone, "127.0.53.10", loop_kind) as server:
        for response in (udp_query(server, name, "MX"), tcp_query(server, name, "MX")):
            assert response.rcode() == rcode
            assert response.answer == []
            assert not response.flags & dns.flags.AA


def test_drop_behaviour_never_answers(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.11", loop_kind) as server:
        query = dns.message.make_query("silent.test", "MX")
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(query, server.host, port=server.port, timeout=SILENCE_TIMEOUT)
        with pytest.raises(dns.exception.Timeout):
            dns.query.tcp(query, server.host, port=server.port, timeout=SILENCE_TIMEOUT)

        assert server.query_counts[("silent.test", "MX")] == 2
        # The server still replies about other names after dropping.
        assert udp_query(server, "normal.test", "MX").rcode() == dns.rcode.NOERROR


def test_truncate_behaviour_udp_then_tcp(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.12", loop_kind) as server:
        over_udp = udp_query(server, "trunc.test", "MX", use_edns=0, payload=4096)
        assert over_udp.flags & dns.flags.TC
        assert over_udp.answer == []

        over_tcp = tcp_query(server, "trunc.test", "MX")
        assert not over_tcp.flags & dns.flags.TC
        assert answer_texts(over_tcp) == ["trunc.test. MX 10 mx1.normal.test."]


def test_mismatch_behaviour(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.13", loop_kind) as server:
        response = udp_query(server, "mismatch.test", "MX")
        assert response.rcode() == dns.rcode.NOERROR
        assert [rrset.name for rrset in response.answer] == [DECOY_OWNER]
        assert answer_texts(response) == ["decoy.invalid. MX 10 mx1.normal.test."]

        made_up = udp_query(server, "mismatch.test", "A")
        assert answer_texts(made_up) == ["decoy.invalid. A 127.0.0.1"]


def test_empty_behaviour(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.14", loop_kind) as server:
        response = udp_query(server, "noanswer.test", "MX")
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.AA
        assert response.answer == []
        assert has_soa_authority(response)


def test_garbage_behaviour(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.15", loop_kind) as server:
        query = dns.message.make_query("garbage.test", "MX")
        # Repeated queries, so that a cached reply with the query's ID would show.
        for _ in range(3):
            reply = send_raw_udp(server, query.to_wire(), REPLY_TIMEOUT)
            assert reply is not None
            assert len(reply) == GARBAGE_SIZE
            assert int.from_bytes(reply[:2], "big") != query.id

        with pytest.raises(dns.exception.DNSException):
            dns.query.udp(query, server.host, port=server.port, timeout=REPLY_TIMEOUT)


def test_behaviour_set_while_running(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.16", loop_kind) as server:
        assert udp_query(server, "normal.test", "MX").rcode() == dns.rcode.NOERROR
        zone.set_behaviour("normal.test", Behaviour.SERVFAIL)
        assert udp_query(server, "normal.test", "MX").rcode() == dns.rcode.SERVFAIL
        zone.clear_behaviour("normal.test")
        assert udp_query(server, "normal.test", "MX").rcode() == dns.rcode.NOERROR


# Truncation of large answers


def test_many_mx_truncated_then_complete(zone: Zone, loop_kind: str) -> None:
    expected = [f"many.test. MX {index} mx{index}.many.test." for index in range(MANY_MX_COUNT)]
    with running_authority(zone, "127.0.53.20", loop_kind) as server:
        classic = udp_query(server, "many.test", "MX")
        assert classic.flags & dns.flags.TC
        assert classic.answer == []

        small_edns = udp_query(server, "many.test", "MX", use_edns=0, payload=CLASSIC_UDP_PAYLOAD)
        assert small_edns.flags & dns.flags.TC

        large_edns = udp_query(server, "many.test", "MX", use_edns=0, payload=4096)
        assert not large_edns.flags & dns.flags.TC
        assert answer_texts(large_edns) == expected

        over_tcp = tcp_query(server, "many.test", "MX")
        assert not over_tcp.flags & dns.flags.TC
        assert answer_texts(over_tcp) == expected


def test_repeated_query_gets_own_id(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.21", loop_kind) as server:
        first = dns.message.make_query("normal.test", "MX")
        second = dns.message.make_query("normal.test", "MX")
        second.id = (first.id + 1) % 65536
        replies = [
            dns.query.udp(query, server.host, port=server.port, timeout=REPLY_TIMEOUT)
            for query in (first, second, first)
        ]
        assert [reply.id for reply in replies] == [first.id, second.id, first.id]
        assert all(len(reply.answer[0]) == 2 for reply in replies)
        assert server.query_counts[("normal.test", "MX")] == 3

        zone.add("normal.test", "MX", "30 mx3.normal.test.")
        changed = dns.query.udp(second, server.host, port=server.port, timeout=REPLY_TIMEOUT)
        assert len(changed.answer[0]) == 3


def test_udp_reply_respects_payload_size(zone: Zone) -> None:
    query = dns.message.make_query("many.test", "MX")
    wire = build_reply(zone, query.to_wire(), Transport.UDP).wire
    assert wire is not None
    assert len(wire) <= CLASSIC_UDP_PAYLOAD


# Malformed queries


def test_garbage_query_bytes(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.30", loop_kind) as server:
        # Shorter than a header: there is no ID to echo, so no reply.
        assert send_raw_udp(server, b"\x12\x34\x00", SILENCE_TIMEOUT) is None

        # A whole header followed by an unparsable question gets FORMERR with the same ID.
        header = b"\xab\xcd\x01\x00\x00\x01" + bytes(6)
        reply = send_raw_udp(server, header + b"\xff" * 9, REPLY_TIMEOUT)
        assert reply is not None
        assert reply[:2] == b"\xab\xcd"
        assert reply[3] & 0x0F == dns.rcode.FORMERR

        # A response (QR set) never gets a reply.
        query = dns.message.make_query("normal.test", "MX")
        response_wire = dns.message.make_response(query).to_wire()
        assert send_raw_udp(server, response_wire, SILENCE_TIMEOUT) is None

        assert server.malformed_count == 3
        assert udp_query(server, "normal.test", "MX").rcode() == dns.rcode.NOERROR


def test_question_count_and_opcode_errors(zone: Zone) -> None:
    no_question = dns.message.Message(id=7)
    reply = dns.message.from_wire(build_reply(zone, no_question.to_wire(), Transport.UDP).wire)
    assert reply.rcode() == dns.rcode.FORMERR

    notify = dns.message.make_query("normal.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(build_reply(zone, notify.to_wire(), Transport.UDP).wire)
    assert reply.rcode() == dns.rcode.NOTIMP

    transfer = dns.message.make_query("test", "AXFR")
    reply = dns.message.from_wire(build_reply(zone, transfer.to_wire(), Transport.TCP).wire)
    assert reply.rcode() == dns.rcode.REFUSED

    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    reply = dns.message.from_wire(build_reply(zone, chaos.to_wire(), Transport.UDP).wire)
    assert reply.rcode() == dns.rcode.REFUSED

    future_edns = dns.message.make_query("normal.test", "MX", use_edns=1)
    reply = dns.message.from_wire(build_reply(zone, future_edns.to_wire(), Transport.UDP).wire)
    assert reply.rcode() == dns.rcode.BADVERS


@pytest.mark.parametrize(
    "labels",
    [(b"tes.",), (b"alias", b"te\\st"), (b"a b", b"test"), (b"\x00",), ()],
)
def test_odd_query_names_get_nxdomain(zone: Zone, labels: tuple[bytes, ...]) -> None:
    qname = dns.name.Name([*labels, b""])
    query = dns.message.make_query(qname, "MX")
    reply = dns.message.from_wire(build_reply(zone, query.to_wire(), Transport.UDP).wire)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert has_soa_authority(reply)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_build_reply_survives_random_bytes(wire: bytes) -> None:
    reply = build_reply(FUZZ_ZONE, wire, Transport.UDP)
    if reply.wire is not None:
        assert len(reply.wire) <= CLASSIC_UDP_PAYLOAD or len(reply.wire) == GARBAGE_SIZE


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_build_reply_survives_corrupted_query(position: int, value: int) -> None:
    wire = bytearray(dns.message.make_query("alias.test", "MX", use_edns=0).to_wire())
    wire[position % len(wire)] = value
    build_reply(FUZZ_ZONE, bytes(wire), Transport.TCP)


# TCP framing and connections


def test_tcp_pipelined_queries(zone: Zone, loop_kind: str) -> None:
    names = ["normal.test", "alias.test", "missing.test", "many.test"]
    queries = [dns.message.make_query(name, "MX") for name in names]
    with running_authority(zone, "127.0.53.40", loop_kind) as server:
        with socket.create_connection((server.host, server.port), timeout=REPLY_TIMEOUT) as client:
            client.sendall(b"".join(query.to_wire(prepend_length=True) for query in queries))
            replies = [recv_tcp_message(client) for _ in queries]

        assert [reply.id for reply in replies] == [query.id for query in queries]
        assert [reply.rcode() for reply in replies] == [
            dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR
        ]
        assert len(replies[3].answer[0]) == MANY_MX_COUNT
        assert server.transport_counts["tcp"] == len(queries)


def test_tcp_query_sent_byte_by_byte(zone: Zone, loop_kind: str) -> None:
    query = dns.message.make_query("normal.test", "MX")
    with running_authority(zone, "127.0.53.41", loop_kind) as server:
        with socket.create_connection((server.host, server.port), timeout=REPLY_TIMEOUT) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in query.to_wire(prepend_length=True):
                client.sendall(bytes([byte]))
            reply = recv_tcp_message(client)
    assert reply.id == query.id
    assert len(reply.answer[0]) == 2


def test_tcp_idle_connection_closed(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.42", loop_kind, tcp_idle_timeout=0.2) as server:
        with socket.create_connection((server.host, server.port), timeout=REPLY_TIMEOUT) as client:
            client.sendall(framed_query("normal.test", "MX"))
            recv_tcp_message(client)
            started = time.monotonic()
            assert client.recv(1) == b""
            assert time.monotonic() - started < REPLY_TIMEOUT


def test_tcp_partial_message_closed_when_idle(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.43", loop_kind, tcp_idle_timeout=0.2) as server:
        with socket.create_connection((server.host, server.port), timeout=REPLY_TIMEOUT) as client:
            # Announce a 65,535-byte message and send only part of it.
            client.sendall(b"\xff\xff" + bytes(1000))
            assert client.recv(1) == b""


def test_tcp_connection_limit(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.44", loop_kind, max_tcp_connections=1) as server:
        address = (server.host, server.port)
        with socket.create_connection(address, timeout=REPLY_TIMEOUT) as first:
            first.sendall(framed_query("normal.test", "MX"))
            recv_tcp_message(first)
            with socket.create_connection(address, timeout=REPLY_TIMEOUT) as second:
                # The server resets the second connection, so sending or receiving fails.
                with pytest.raises(ConnectionError):
                    second.sendall(framed_query("normal.test", "MX"))
                    recv_tcp_message(second)


# Counters, ports and lifecycle


def test_counters_and_reset(zone: Zone, loop_kind: str) -> None:
    with running_authority(zone, "127.0.53.50", loop_kind) as server:
        udp_query(server, "normal.test", "MX")
        udp_query(server, "normal.test", "MX")
        tcp_query(server, "mx1.normal.test", "A")

        assert server.query_counts[("normal.test", "MX")] == 2
        assert server.query_counts[("mx1.normal.test", "A")] == 1
        assert server.transport_counts == {"udp": 2, "tcp": 1}

        server.reset_counts()
        assert server.query_counts == {}
        assert server.transport_counts == {}
        assert server.malformed_count == 0


def test_udp_and_tcp_share_the_port(zone: Zone) -> None:
    async def scenario() -> None:
        async with DnsAuthority(zone, host="127.0.53.51") as first:
            assert first.port != 0
            assert first.address == f"127.0.53.51:{first.port}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                with pytest.raises(OSError):
                    probe.bind(("127.0.53.51", first.port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                with pytest.raises(OSError):
                    probe.bind(("127.0.53.51", first.port))

            # An explicit port that is taken raises instead of moving elsewhere.
            with pytest.raises(OSError):
                await DnsAuthority(zone, host="127.0.53.51", port=first.port).start()

    asyncio.run(scenario())


def test_explicit_port(zone: Zone) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as finder:
        finder.bind(("127.0.53.52", 0))
        port = finder.getsockname()[1]

    async def scenario() -> None:
        async with DnsAuthority(zone, host="127.0.53.52", port=port) as server:
            assert server.port == port
            response = await asyncio.to_thread(udp_query, server, "normal.test", "MX")
            assert response.rcode() == dns.rcode.NOERROR
        # stop() twice is harmless.
        await server.stop()

    asyncio.run(scenario())


def test_ipv6_loopback_address(zone: Zone, loop_kind: str) -> None:
    async def scenario(server: DnsAuthority) -> None:
        resolver = aiodns.DNSResolver(nameservers=[server.address], timeout=REPLY_TIMEOUT, tries=1)
        try:
            mx = await resolver.query_dns("normal.test", "MX")
            assert len(mx.answer) == 2
        finally:
            await resolver.close()

    with running_authority(zone, "::1", loop_kind) as server:
        assert server.address == f"[::1]:{server.port}"
        response = udp_query(server, "normal.test", "MX")
        assert len(response.answer[0]) == 2
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
            runner.run(scenario(server))


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "localhost", "192.168.1.1"])
def test_rejects_non_loopback_host(zone: Zone, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DnsAuthority(zone, host=host)


# aiodns (pycares 5) against the server


def test_aiodns_nameserver_with_port(zone: Zone, loop_kind: str) -> None:
    async def scenario(server: DnsAuthority) -> None:
        resolver = aiodns.DNSResolver(nameservers=[server.address], timeout=REPLY_TIMEOUT, tries=1)
        try:
            mx = await resolver.query_dns("normal.test", "MX")
            assert [(record.data.priority, record.data.exchange) for record in mx.answer] == [
                (10, "mx1.normal.test"),
                (20, "mx2.normal.test"),
            ]

            # 60 MX records do not fit in the UDP payload that c-ares offers, so it
            # retries over TCP.
            many = await resolver.query_dns("many.test", "MX")
            assert len(many.answer) == MANY_MX_COUNT

            with pytest.raises(aiodns.error.DNSError) as missing:
                await resolver.query_dns("missing.test", "MX")
            assert missing.value.args[0] == aiodns.error.ARES_ENOTFOUND

            with pytest.raises(aiodns.error.DNSError) as nodata:
                await resolver.query_dns("mx1.normal.test", "MX")
            assert nodata.value.args[0] == aiodns.error.ARES_ENODATA

            with pytest.raises(aiodns.error.DNSError) as servfail:
                await resolver.query_dns("servfail.test", "MX")
            assert servfail.value.args[0] == aiodns.error.ARES_ESERVFAIL
        finally:
            await resolver.close()

    with running_authority(zone, "127.0.53.60", loop_kind) as server:
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
            runner.run(scenario(server))
        assert server.query_counts[("normal.test", "MX")] == 1
        assert server.transport_counts["tcp"] >= 1


# Zone model


def test_zone_from_dict_names_bad_entry() -> None:
    cases = [
        (
            {"records": {"a.test": {"MX": ["10 mx.test.", "ten mx.test."]}}},
            "records['a.test']['MX'][1]",
        ),
        ({"records": {"a.test": {"A": ["300.1.1.1"]}}}, "records['a.test']['A'][0]"),
        ({"records": {"a.test": {"BOGUS": ["x"]}}}, "records['a.test']['BOGUS'][0]"),
        ({"records": {"a..test": {"A": ["127.0.0.1"]}}}, "records['a..test']['A'][0]"),
        (
            {"records": {"a.test": {"A": "127.0.0.1", "CNAME": ["b.test."]}}},
            "records['a.test']['CNAME'][0]",
        ),
        ({"records": {"a.test": ["A"]}}, "records['a.test']"),
        ({"behaviours": {"a.test": "explode"}}, "behaviours['a.test']"),
        ({"ttl": -1}, "ttl"),
        ({"recrods": {}}, "unknown keys"),
    ]
    for data, expected in cases:
        with pytest.raises(ValueError) as error:
            Zone.from_dict(data)
        assert expected in str(error.value), data


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "root name"),
        ("a..test", "empty label"),
        ("a b.test", "not supported"),
        ("a\\.b.test", "not supported"),
        ("bücher.test", "IDNA"),
        ("x" * 64 + ".test", "label"),
        ("a." * 127 + "test", "longer than 253"),
    ],
)
def test_zone_rejects_invalid_names(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Zone().add(name, "A", "127.0.0.1")


def test_zone_add_programmatically() -> None:
    zone = Zone(ttl=60)
    for index in range(2000):
        zone.add(f"d{index}.test", "MX", f"10 mx.d{index}.test.")
        zone.add(f"mx.d{index}.test", "A", "127.0.25.1")
    zone.add("d7.test", "MX", "10 mx.d7.test.")

    answer = zone.resolve(dns.name.from_text("D1999.test."), dns.rdatatype.MX)
    assert [rdata.to_text() for rdata in answer.answer[0]] == ["10 mx.d1999.test."]
    assert len(zone.rdatas("d7.test", "MX")) == 1
    assert "mx.d5.test" in zone
    assert "d5.example" not in zone


def test_zone_rejects_cname_beside_data() -> None:
    zone = Zone()
    zone.add("a.test", "CNAME", "b.test.")
    with pytest.raises(ValueError, match="CNAME"):
        zone.add("a.test", "A", "127.0.0.1")
    with pytest.raises(ValueError, match="CNAME"):
        zone.add("a.test", "CNAME", "c.test.")


def test_to_zonefile_round_trip(zone: Zone) -> None:
    text = zone.to_zonefile("test.")
    parsed = dns.zone.from_text(text, origin="test.", relativize=False)

    soa = parsed.find_rdataset("test.", "SOA")
    assert soa[0].mname == dns.name.from_text("ns1.test.")
    assert parsed.find_rdataset("test.", "NS")[0].target == dns.name.from_text("ns1.test.")
    mx = parsed.find_rdataset("normal.test.", "MX")
    assert [rdata.to_text() for rdata in mx] == ["10 mx1.normal.test.", "20 mx2.normal.test."]
    assert len(parsed.find_rdataset("many.test.", "MX")) == MANY_MX_COUNT
    assert parsed.get_node("host.deep.example.") is None
    assert "; servfail.test. has the lab-only behaviour 'servfail'" in text


def test_to_zonefile_other_origin(zone: Zone) -> None:
    text = zone.to_zonefile("example")
    parsed = dns.zone.from_text(text, origin="example.", relativize=False)
    assert parsed.find_rdataset("host.deep.example.", "A")[0].address == "127.0.25.3"
    assert parsed.get_node("normal.test.") is None
