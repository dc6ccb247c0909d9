"""Tests of the lab SMTP servers: each behaviour as seen by a client on loopback.

Every socket test runs under the default asyncio loop and under uvloop, and uses
its own 127.0.25.x address. Clients built with smtplib always pass
``local_hostname``, because smtplib otherwise calls socket.getfqdn(), which queries
the system resolver.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.lab import certs
from scanner.lab.behaviours import (
    MAX_RECIPIENTS,
    PRESETS,
    Behaviour,
    RecipientOutcome,
    Reply,
    SmtpDialogue,
)
from scanner.lab import smtp_server
from scanner.lab.smtp_server import MAX_COMMANDS_KEPT, SmtpHost

pytestmark = [
    pytest.mark.timeout(30),
    # TLS 1.0 and 1.1 are deprecated in the ssl module, and tests use them on purpose.
    pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1(_1)? is deprecated:DeprecationWarning"),
]

HOSTNAME = "mx1.normal.test"

# Bound for one test's event loop run, in seconds.
RUN_TIMEOUT = 10.0

# How long a test waits to conclude that the server sends nothing.
SILENCE = 0.3


Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on the loop named by the parameter."""
    loop_factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run_bounded(coroutine: Coroutine[Any, Any, Any]) -> Any:
        async def bounded() -> Any:
            try:
                async with asyncio.timeout(RUN_TIMEOUT):
                    return await coroutine
            finally:
                while Client.opened:
                    Client.opened.pop().close()

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(bounded())

    return run_bounded


def host(address: str, config: dict[str, Any] | None = None, **kwargs: Any) -> SmtpHost:
    behaviour = Behaviour.from_dict(config or {"behaviour": "esmtp"})
    return SmtpHost(address=address, port=0, hostname=HOSTNAME, behaviour=behaviour, **kwargs)


class Client:
    """A raw SMTP client on asyncio streams, which shows replies byte for byte."""

    # Clients not yet closed; the run fixture closes them when the test ends.
    opened: list[Client] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        Client.opened.append(self)

    @classmethod
    async def connect(cls, server: SmtpHost) -> Client:
        reader, writer = await asyncio.open_connection(server.address, server.port, limit=4 * 1024 * 1024)
        return cls(reader, writer)

    async def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode() + b"\r\n"
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 5.0) -> tuple[int, list[str]]:
        """Read one reply: continuation lines up to the line with a space after the code."""
        lines = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.reader.readuntil(b"\n")
                text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                lines.append(text[4:])
                if text[3:4] != "-":
                    return int(text[:3]), lines

    async def command(self, line: str) -> tuple[int, list[str]]:
        await self.send(line)
        return await self.reply()

    async def read_raw(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes, failing after ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    async def is_silent(self, seconds: float = SILENCE) -> bool:
        """Return True if the server sends nothing and keeps the connection open."""
        try:
            async with asyncio.timeout(seconds):
                await self.reader.read(1)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.writer.transport.abort()


# Behaviour configuration


def test_from_dict_overrides_preset() -> None:
    behaviour = Behaviour.from_dict({"behaviour": "esmtp", "banner_delay": 0.2})
    assert behaviour.name == "esmtp"
    assert behaviour.banner_delay == 0.2


def test_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match="banner_dealy.*colour"):
        Behaviour.from_dict({"behaviour": "esmtp", "banner_dealy": 1, "colour": "red"})


def test_from_dict_rejects_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown behaviour 'smtp2'"):
        Behaviour.from_dict({"behaviour": "smtp2"})
    with pytest.raises(ValueError, match="unknown behaviour"):
        Behaviour.from_dict({"behaviour": ["esmtp"]})
    with pytest.raises(ValueError, match="must be a mapping"):
        Behaviour.from_dict(["esmtp"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"banner_delay": -1}, "banner_delay"),
        ({"banner_delay": "slow"}, "banner_delay"),
        ({"per_reply_delay": True}, "per_reply_delay"),
        ({"reject_code": 250}, "reject_code"),
        ({"rate_limit_code": 451}, "rate_limit_code"),
        ({"recipients": {"a@x.test": "maybe"}}, "maybe"),
        ({"recipients": ["a@x.test"]}, "recipients"),
        ({"mail_from": "reject"}, "mail_from"),
        ({"extensions": "PIPELINING"}, "extensions"),
        ({"banner_text": "two\r\nlines"}, "CR or LF"),
        ({"catch_all": "yes"}, "catch_all"),
    ],
)
def test_from_dict_rejects_invalid_value(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Behaviour.from_dict(config)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name: str) -> None:
    assert Behaviour.preset(name).name == name


def test_recipient_lookup_order() -> None:
    behaviour = Behaviour.from_dict(
        {
            "recipients": {
                "Postmaster@X.test": "policy",
                "*@grey.test": "greylist",
                "boss@grey.test": "accept",
                "*": "unknown",
            }
        }
    )
    assert behaviour.recipient_outcome("postmaster@x.test") is RecipientOutcome.POLICY
    assert behaviour.recipient_outcome("BOSS@grey.test") is RecipientOutcome.ACCEPT
    assert behaviour.recipient_outcome("anyone@grey.test") is RecipientOutcome.GREYLIST
    assert behaviour.recipient_outcome("anyone@other.test") is RecipientOutcome.UNKNOWN


def test_recipient_defaults() -> None:
    plain = Behaviour()
    assert plain.recipient_outcome("postmaster@x.test") is RecipientOutcome.ACCEPT
    assert plain.recipient_outcome("random-5f2a@x.test") is RecipientOutcome.UNKNOWN
    catch_all = Behaviour.preset("catch_all")
    assert catch_all.recipient_outcome("random-5f2a@x.test") is RecipientOutcome.ACCEPT


# Reply framing and the dialogue, without sockets


def test_reply_encoding() -> None:
    reply = Reply(250, ("mx greets c", "PIPELINING", "DSN"))
    assert reply.encode() == b"250-mx greets c\r\n250-PIPELINING\r\n250 DSN\r\n"
    assert reply.encode(bare_lf=True) == b"250-mx greets c\n250-PIPELINING\n250 DSN\n"
    assert reply.encode(blank_lines=True) == b"250-mx greets c\r\n\r\n250-PIPELINING\r\n\r\n250 DSN\r\n"


def dialogue_after_ehlo(config: dict[str, Any] | None = None) -> SmtpDialogue:
    dialogue = SmtpDialogue(Behaviour.from_dict(config or {}), HOSTNAME, tls_available=False)
    dialogue.greeting()
    assert dialogue.receive_line("EHLO client.test").reply.code == 250
    return dialogue


def code_of(dialogue: SmtpDialogue, line: str) -> str:
    step = dialogue.receive_line(line)
    assert step.reply is not None
    return f"{step.reply.code} {step.reply.lines[-1]}"


def test_dialogue_command_sequence_errors() -> None:
    dialogue = SmtpDialogue(Behaviour(), HOSTNAME, tls_available=False)
    dialogue.greeting()
    assert code_of(dialogue, "MAIL FROM:<a@b.test>").startswith("503 5.5.1")
    assert code_of(dialogue, "RCPT TO:<postmaster@x.test>").startswith("503 5.5.1")
    assert code_of(dialogue, "DATA").startswith("503 5.5.1")
    assert code_of(dialogue, "EHLO").startswith("501 5.5.4")
    assert code_of(dialogue, "XYZZY").startswith("502 5.5.2")
    assert code_of(dialogue, "\x00\xff").startswith("502 5.5.2")
    assert code_of(dialogue, "STARTTLS").startswith("502 5.5.1")


def test_dialogue_mail_transaction() -> None:
    dialogue = dialogue_after_ehlo()
    assert code_of(dialogue, "mail from:<>") == "250 2.1.0 Sender OK"
    assert code_of(dialogue, "MAIL FROM:<a@b.test>").startswith("503 5.5.1")
    assert code_of(dialogue, "RCPT TO:<>").startswith("501 5.5.4")
    assert code_of(dialogue, "RCPT TO:postmaster@x.test").startswith("501 5.5.4")
    assert code_of(dialogue, "RCPT TO:<@relay.test:postmaster@x.test>") == "250 2.1.5 Recipient OK"
    assert code_of(dialogue, "RSET") == "250 2.0.0 OK"
    assert code_of(dialogue, "RCPT TO:<postmaster@x.test>").startswith("503 5.5.1")
    assert code_of(dialogue, "NOOP") == "250 2.0.0 OK"
    assert code_of(dialogue, "VRFY postmaster").startswith("252 2.5.2")


def test_dialogue_size_parameter() -> None:
    dialogue = dialogue_after_ehlo()
    assert code_of(dialogue, "MAIL FROM:<a@b.test> SIZE=99999999") == "552 5.3.4 Message size exceeds fixed limit"
    assert code_of(dialogue, "MAIL FROM:<a@b.test> SIZE=big").startswith("501 5.5.4")
    assert code_of(dialogue, "MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME") == "250 2.1.0 Sender OK"


def test_dialogue_recipient_limit() -> None:
    dialogue = dialogue_after_ehlo({"behaviour": "catch_all"})
    code_of(dialogue, "MAIL FROM:<a@b.test>")
    for number in range(MAX_RECIPIENTS):
        assert code_of(dialogue, f"RCPT TO:<user{number}@x.test>").startswith("250")
    assert code_of(dialogue, "RCPT TO:<one-more@x.test>") == "452 4.5.3 Too many recipients"


def test_dialogue_ehlo_echo_is_sanitised() -> None:
    dialogue = SmtpDialogue(Behaviour(), HOSTNAME, tls_available=False)
    reply = dialogue.receive_line("EHLO evil\rinjected\x1b[2J").reply
    assert reply is not None
    assert b"\r2" not in reply.encode()
    assert "\x1b" not in reply.lines[0]


# Command lines as a client might send them: SMTP verbs with arbitrary arguments,
# or any text, including surrogates that stand for undecodable bytes.
_VERBS = st.sampled_from(["EHLO", "HELO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "QUIT", "STARTTLS", "VRFY"])
_COMMAND_LINES = st.one_of(
    st.builds(lambda verb, rest: f"{verb} {rest}", _VERBS, st.text(max_size=80)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda data: data.decode("utf-8", "surrogateescape")),
)


@settings(max_examples=300, deadline=None)
@given(
    preset=st.sampled_from(sorted(PRESETS)),
    lines=st.lists(_COMMAND_LINES, max_size=20),
    tls_available=st.booleans(),
)
def test_dialogue_survives_any_input(preset: str, lines: list[str], tls_available: bool) -> None:
    dialogue = SmtpDialogue(Behaviour.preset(preset), HOSTNAME, tls_available=tls_available)
    dialogue.greeting()
    for line in lines:
        step = dialogue.receive_line(line)
        if step.reply is None:
            continue
        assert 200 <= step.reply.code <= 599
        encoded = step.reply.encode()
        # Each reply line ends in CRLF, and no client text adds another line break.
        assert encoded.count(b"\n") == len(step.reply.lines)
        assert encoded.count(b"\r") == len(step.reply.lines)


# Ordinary behaviours over sockets


def test_esmtp_session(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.1") as server:
            client = await Client.connect(server)
            code, banner = await client.reply()
            assert code == 220
            assert banner == [f"{HOSTNAME} ESMTP mxscan lab"]

            code, lines = await client.command("EHLO client.test")
            assert code == 250
            assert lines[0] == f"{HOSTNAME} greets client.test"
            for keyword in ("PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN"):
                assert keyword in lines
            assert "STARTTLS" not in lines

            assert await client.command("HELO client.test") == (250, [HOSTNAME])
            assert await client.command("MAIL FROM:<probe@scanner.test>") == (250, ["2.1.0 Sender OK"])
            assert await client.command("RCPT TO:<postmaster@normal.test>") == (250, ["2.1.5 Recipient OK"])
            assert await client.command("RCPT TO:<nobody@normal.test>") == (550, ["5.1.1 User unknown"])
            assert await client.command("RSET") == (250, ["2.0.0 OK"])
            assert await client.command("NOOP") == (250, ["2.0.0 OK"])
            assert await client.command("STARTTLS") == (502, ["5.5.1 STARTTLS not offered"])
            assert await client.command("QUIT") == (221, ["2.0.0 Bye"])
            assert await client.read_raw() == b""

            assert server.connections == 1
            assert server.data_commands == 0
            session = server.sessions[0]
            assert session.commands[:3] == ["EHLO client.test", "HELO client.test", "MAIL FROM:<probe@scanner.test>"]
            assert session.commands[-1] == "QUIT"

    run(scenario())


def test_smtplib_check_message_counts_data(run: Runner) -> None:
    def send_check_message(address: str, port: int) -> tuple[int, bytes]:
        with smtplib.SMTP(address, port, local_hostname="client.test", timeout=5) as smtp:
            smtp.ehlo()
            smtp.mail("check@scanner.test")
            smtp.rcpt("postmaster@normal.test")
            return smtp.data(b"Subject: mxscan check\r\n\r\n.leading dot\r\nbody\r\n")

    async def scenario() -> None:
        async with host("127.0.25.2") as server:
            code, text = await asyncio.to_thread(send_check_message, server.address, server.port)
            assert (code, text) == (250, b"2.0.0 Message accepted")
            assert server.data_commands == 1
            # The message body is not recorded as commands.
            assert "body" not in server.sessions[0].commands

    run(scenario())


def test_pipelined_commands(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.3") as server:
            client = await Client.connect(server)
            await client.reply()
            await client.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<postmaster@x.test>\r\nRSET\r\n")
            assert (await client.reply())[0] == 250
            assert await client.reply() == (250, ["2.1.0 Sender OK"])
            assert await client.reply() == (250, ["2.1.5 Recipient OK"])
            assert await client.reply() == (250, ["2.0.0 OK"])
            client.close()

    run(scenario())


def test_multiline_banner(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.4", {"behaviour": "multiline_banner"}) as server:
            client = await Client.connect(server)
            code, lines = await client.reply()
            assert code == 220
            assert len(lines) == 3
            assert lines[0] == f"{HOSTNAME} ESMTP mxscan lab"
            client.close()

    run(scenario())


def test_banner_reject_waits_for_quit(run: Runner) -> None:
    async def scenario() -> None:
        config = {"behaviour": "banner_reject", "reject_text": "5.7.1 Blocked by lab"}
        async with host("127.0.25.5", config) as server:
            client = await Client.connect(server)
            assert await client.reply() == (554, ["5.7.1 Blocked by lab"])
            assert await client.command("EHLO client.test") == (503, ["5.5.1 Bad sequence of commands"])
            assert await client.command("QUIT") == (221, ["2.0.0 Bye"])
            assert await client.read_raw() == b""

    run(scenario())


def test_busy_421_closes(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.6", {"behaviour": "busy_421"}) as server:
            client = await Client.connect(server)
            code, lines = await client.reply()
            assert code == 421
            assert lines[0].startswith("4.3.2")
            assert await client.read_raw() == b""

    run(scenario())


def test_banner_delay(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.7", {"behaviour": "esmtp", "banner_delay": 0.25}) as server:
            started = time.monotonic()
            client = await Client.connect(server)
            assert (await client.reply())[0] == 220
            assert time.monotonic() - started >= 0.25
            client.close()

    run(scenario())


def test_per_reply_delay(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.8", {"behaviour": "per_reply_delay", "per_reply_delay": 0.25}) as server:
            client = await Client.connect(server)
            started = time.monotonic()
            await client.reply()
            assert time.monotonic() - started < 0.25
            started = time.monotonic()
            assert (await client.command("NOOP"))[0] == 250
            assert time.monotonic() - started >= 0.25
            client.close()

    run(scenario())


def test_no_banner_stays_silent(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.9", {"behaviour": "no_banner"}) as server:
            client = await Client.connect(server)
            assert await client.is_silent()
            await client.send("EHLO client.test")
            assert await client.is_silent()
            assert server.sessions[0].commands == ["EHLO client.test"]
            client.close()

    run(scenario())


def test_helo_only(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.10", {"behaviour": "helo_only"}) as server:
            client = await Client.connect(server)
            await client.reply()
            assert await client.command("EHLO client.test") == (502, ["5.5.1 Command not implemented"])
            assert await client.command("HELO client.test") == (250, [HOSTNAME])
            assert (await client.command("MAIL FROM:<a@c.test>"))[0] == 250
            client.close()

    run(scenario())


def test_helo_only_with_500(run: Runner) -> None:
    async def scenario() -> None:
        config = {"behaviour": "helo_only", "reject_code": 500, "reject_text": "5.5.1 Unrecognized command"}
        async with host("127.0.25.10", config) as server:
            client = await Client.connect(server)
            await client.reply()
            assert await client.command("EHLO client.test") == (500, ["5.5.1 Unrecognized command"])
            client.close()

    run(scenario())


def test_ehlo_reject(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.11", {"behaviour": "ehlo_reject"}) as server:
            client = await Client.connect(server)
            await client.reply()
            assert await client.command("EHLO client.test") == (501, ["5.5.4 Invalid domain"])
            assert await client.command("HELO client.test") == (501, ["5.5.4 Invalid domain"])
            client.close()

    run(scenario())


def test_close_immediately(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.12", {"behaviour": "close_immediately"}) as server:
            client = await Client.connect(server)
            assert await client.read_raw() == b""
            assert server.connections == 1

    run(scenario())


def test_reset_sends_rst(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.13", {"behaviour": "reset"}) as server:
            client = await Client.connect(server)
            with pytest.raises(ConnectionResetError):
                await client.read_raw()
            assert server.connections == 1

    run(scenario())


# Hostile behaviours


def test_drip_sends_one_byte_at_a_time(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.14", {"behaviour": "drip", "drip_interval": 0.05}) as server:
            client = await Client.connect(server)
            received = b""
            async with asyncio.timeout(2):
                while len(received) < 6:
                    chunk = await client.reader.read(100)
                    assert len(chunk) <= 2
                    received += chunk
            assert received.startswith(b"220 ")
            assert b"\n" not in received
            await server.stop()
            assert await client.read_raw() == b""

    run(scenario())


def test_long_line_then_open(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.15", {"behaviour": "long_line"}) as server:
            client = await Client.connect(server)
            async with asyncio.timeout(5):
                data = await client.reader.readexactly(4 + 1024 * 1024)
            assert data.startswith(b"220 ")
            assert b"\n" not in data
            assert await client.is_silent()
            client.close()

    run(scenario())


def test_endless_multiline_until_stop(run: Runner) -> None:
    async def scenario() -> None:
        server = host("127.0.25.16", {"behaviour": "endless_multiline"})
        await server.start()
        client = await Client.connect(server)
        async with asyncio.timeout(5):
            for _ in range(2000):
                line = await client.reader.readuntil(b"\n")
                assert line.startswith(b"220-")
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1
        # The rest of what was sent may still be buffered; then the stream ends.
        async with asyncio.timeout(5):
            while await client.reader.read(65536):
                pass

    run(scenario())


def test_garbage_text_banner(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.17", {"behaviour": "garbage_text"}) as server:
            client = await Client.connect(server)
            raw = b""
            async with asyncio.timeout(5):
                while not raw.endswith(b"ESMTP mxscan lab\r\n"):
                    raw += await client.reader.read(4096)
            for fragment in (b"\x00", b"\x1b[31m", b"\xff\xfe", b"\xc3(", b'"double"', b"\\\\"):
                assert fragment in raw
            assert raw.splitlines()[-1] == f"220 {HOSTNAME} ESMTP mxscan lab".encode()
            assert all(line.startswith(b"220-") for line in raw.splitlines()[:-1])
            assert (await client.command("EHLO client.test"))[0] == 250
            client.close()

    run(scenario())


def test_bare_lf_replies(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.18", {"behaviour": "bare_lf"}) as server:
            client = await Client.connect(server)
            await client.send(b"EHLO client.test\r\nQUIT\r\n")
            raw = await client.read_raw()
            assert raw.startswith(b"220 ")
            assert b"\r" not in raw
            assert raw.count(b"\n") == 1 + 6 + 1

    run(scenario())


def test_blank_lines_in_reply(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.19", {"behaviour": "blank_lines"}) as server:
            client = await Client.connect(server)
            await client.send(b"EHLO client.test\r\nQUIT\r\n")
            raw = await client.read_raw()
            assert f"250-{HOSTNAME} greets client.test\r\n\r\n250-PIPELINING".encode() in raw
            assert raw.endswith(b"\r\n250 DSN\r\n221 2.0.0 Bye\r\n")

    run(scenario())


def test_huge_ehlo(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.20", {"behaviour": "huge_ehlo"}) as server:
            client = await Client.connect(server)
            await client.reply()
            code, lines = await client.command("EHLO client.test")
            assert code == 250
            assert len(lines) == 1 + 10_000 + 5
            assert lines[-1] == "DSN"
            client.close()

    run(scenario())


def test_close_mid_reply(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.21", {"behaviour": "close_mid_reply"}) as server:
            client = await Client.connect(server)
            await client.reply()
            await client.send("EHLO client.test")
            raw = await client.read_raw()
            lines = raw.splitlines()
            assert lines == [f"250-{HOSTNAME} greets client.test".encode(), b"250-PIPELINING", b"250-SIZE 10240000"]

    run(scenario())


def test_http_answers_400_to_smtp(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.22", {"behaviour": "http"}) as server:
            client = await Client.connect(server)
            assert await client.is_silent()
            await client.send("EHLO client.test")
            raw = await client.read_raw()
            assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")

    run(scenario())


def test_http_answers_200_to_get(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.22", {"behaviour": "http"}) as server:
            client = await Client.connect(server)
            await client.send(b"GET / HTTP/1.1\r\nHost: mx1.normal.test\r\n\r\n")
            raw = await client.read_raw()
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
            assert raw.endswith(b"</html>\n")

    run(scenario())


def test_quit_silent(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.23", {"behaviour": "quit_silent"}) as server:
            client = await Client.connect(server)
            await client.reply()
            assert (await client.command("EHLO client.test"))[0] == 250
            await client.send("QUIT")
            assert await client.is_silent()
            await server.stop()
            assert await client.read_raw() == b""

    run(scenario())


def test_starttls_454(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.24", {"behaviour": "starttls_454"}) as server:
            client = await Client.connect(server)
            await client.reply()
            assert "STARTTLS" in (await client.command("EHLO client.test"))[1]
            assert await client.command("STARTTLS") == (454, ["4.7.0 TLS not available"])
            assert (await client.command("NOOP"))[0] == 250
            client.close()

    run(scenario())


def test_tls_garbage_fails_handshake(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.25", {"behaviour": "tls_garbage"}) as server:
            client = await Client.connect(server)
            await client.reply()
            assert "STARTTLS" in (await client.command("EHLO client.test"))[1]
            assert await client.command("STARTTLS") == (220, ["2.0.0 Ready to start TLS"])
            with pytest.raises((ssl.SSLError, ConnectionError)):
                async with asyncio.timeout(5):
                    await client.writer.start_tls(certs.client_context(None), server_hostname=HOSTNAME)
            client.close()

    run(scenario())


def test_tls_garbage_bytes(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.25", {"behaviour": "tls_garbage", "garbage_bytes": 1000}) as server:
            client = await Client.connect(server)
            await client.reply()
            await client.command("EHLO client.test")
            await client.command("STARTTLS")
            assert await client.is_silent()
            await client.send(b"\x16\x03\x01\x00\x05hello")
            async with asyncio.timeout(5):
                garbage = await client.reader.readexactly(1000)
            assert len(set(garbage)) > 100
            assert await client.is_silent()
            client.close()

    run(scenario())


# Recipient probes


def test_recipient_verdicts(run: Runner) -> None:
    config = {
        "recipients": {
            "ok@normal.test": "accept",
            "grey@normal.test": "greylist",
            "slow@normal.test": "rate_limit",
            "spam@normal.test": "policy",
            "*": "unknown",
        }
    }
    expected = {
        "ok@normal.test": (250, ["2.1.5 Recipient OK"]),
        "grey@normal.test": (451, ["4.7.1 Greylisted, try again later"]),
        "slow@normal.test": (450, ["4.5.3 Rate limit exceeded, try again later"]),
        "spam@normal.test": (554, ["5.7.1 Recipient rejected by policy"]),
        "postmaster@normal.test": (550, ["5.1.1 User unknown"]),
    }

    async def scenario() -> None:
        async with host("127.0.25.26", config) as server:
            client = await Client.connect(server)
            await client.reply()
            await client.command("EHLO client.test")
            assert (await client.command("MAIL FROM:<>"))[0] == 250
            for address, reply in expected.items():
                assert await client.command(f"RCPT TO:<{address}>") == reply, address
            client.close()

    run(scenario())


def test_rate_limit_421_closes(run: Runner) -> None:
    async def scenario() -> None:
        config = {"recipients": {"*": "rate_limit"}, "rate_limit_code": 421}
        async with host("127.0.25.27", config) as server:
            client = await Client.connect(server)
            await client.reply()
            await client.command("EHLO client.test")
            await client.command("MAIL FROM:<>")
            assert await client.command("RCPT TO:<a@normal.test>") == (421, ["4.7.0 Too many connections, closing"])
            assert await client.read_raw() == b""

    run(scenario())


def test_catch_all_accepts_any_local_part(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.28", {"behaviour": "catch_all"}) as server:
            client = await Client.connect(server)
            await client.reply()
            await client.command("EHLO client.test")
            await client.command("MAIL FROM:<>")
            assert (await client.command("RCPT TO:<zq8x1-nonexistent@normal.test>"))[0] == 250
            client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("preset", "reply"),
    [
        ("sender_reject", (550, ["5.1.7 Sender address rejected"])),
        ("auth_required", (530, ["5.7.1 Authentication required"])),
    ],
)
def test_mail_from_verdicts(run: Runner, preset: str, reply: tuple[int, list[str]]) -> None:
    async def scenario() -> None:
        async with host("127.0.25.29", {"behaviour": preset}) as server:
            client = await Client.connect(server)
            await client.reply()
            await client.command("EHLO client.test")
            assert await client.command("MAIL FROM:<probe@scanner.test>") == reply
            assert (await client.command("RCPT TO:<postmaster@normal.test>"))[0] == 503
            client.close()

    run(scenario())


# TLS


def test_starttls_with_lab_ca(run: Runner) -> None:
    async def scenario() -> None:
        with certs.LabCertificateAuthority() as authority:
            context = certs.server_context(authority.leaf(HOSTNAME))
            async with host("127.0.25.30", tls=context) as server:
                client = await Client.connect(server)
                await client.reply()
                assert "STARTTLS" in (await client.command("EHLO client.test"))[1]
                assert await client.command("STARTTLS") == (220, ["2.0.0 Ready to start TLS"])
                await client.writer.start_tls(certs.client_context(authority.ca_path), server_hostname=HOSTNAME)
                assert client.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")

                # RFC 3207: the session starts over, and STARTTLS is no longer offered.
                assert (await client.command("MAIL FROM:<a@c.test>"))[0] == 503
                code, lines = await client.command("EHLO client.test")
                assert code == 250
                assert "STARTTLS" not in lines
                assert await client.command("STARTTLS") == (503, ["5.5.1 TLS already active"])
                assert await client.command("QUIT") == (221, ["2.0.0 Bye"])
                assert server.sessions[0].tls

    run(scenario())


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("expired", "certificate has expired"),
        ("wrong_name", "Hostname mismatch"),
        ("self_signed", "self-signed certificate"),
    ],
)
def test_bad_certificates_fail_verification(run: Runner, kind: str, error: str) -> None:
    async def scenario() -> None:
        with certs.LabCertificateAuthority() as authority:
            files = getattr(authority, kind)(HOSTNAME)
            assert files.certificate.exists()
            assert files.key.exists()
            async with host("127.0.25.31", tls=certs.server_context(files)) as server:
                client = await Client.connect(server)
                await client.reply()
                await client.command("EHLO client.test")
                await client.command("STARTTLS")
                with pytest.raises(ssl.SSLCertVerificationError, match=error):
                    await client.writer.start_tls(certs.client_context(authority.ca_path), server_hostname=HOSTNAME)
                client.close()

    run(scenario())


def test_tls_1_0_only_server(run: Runner) -> None:
    async def handshake(server: SmtpHost, context: ssl.SSLContext) -> str:
        client = await Client.connect(server)
        try:
            await client.reply()
            await client.command("EHLO client.test")
            await client.command("STARTTLS")
            await client.writer.start_tls(context, server_hostname=HOSTNAME)
            return client.writer.get_extra_info("ssl_object").version()
        finally:
            client.close()

    async def scenario() -> None:
        with certs.LabCertificateAuthority() as authority:
            old = ssl.TLSVersion.TLSv1
            context = certs.server_context(authority.leaf(HOSTNAME), minimum_version=old, maximum_version=old)
            async with host("127.0.25.32", tls=context) as server:
                assert await handshake(server, certs.client_context(None, legacy=True)) == "TLSv1"
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    await handshake(server, certs.client_context(None))

    run(scenario())


@pytest.mark.parametrize(
    ("kind", "version", "verified"),
    [
        ("valid", "TLSv1.3", True),
        ("expired", "TLSv1.3", False),
        ("self_signed", "TLSv1.3", False),
        ("wrong_name", "TLSv1.3", False),
        ("tls1_0_only", "TLSv1", True),
        ("tls1_1_only", "TLSv1.1", True),
    ],
)
def test_server_tls_kinds(run: Runner, kind: str, version: str, verified: bool) -> None:
    async def handshake(server: SmtpHost, context: ssl.SSLContext) -> str:
        client = await Client.connect(server)
        try:
            await client.reply()
            await client.command("EHLO client.test")
            await client.command("STARTTLS")
            await client.writer.start_tls(context, server_hostname=HOSTNAME)
            return client.writer.get_extra_info("ssl_object").version()
        finally:
            client.close()

    async def scenario() -> None:
        with certs.LabCertificateAuthority() as authority:
            context = certs.server_context_for(authority, HOSTNAME, kind)
            async with host("127.0.25.40", tls=context) as server:
                # A scanner that records certificates without trusting them connects to all.
                assert await handshake(server, certs.client_context(None, legacy=True)) == version
                if verified:
                    strict = certs.client_context(authority.ca_path, legacy=True)
                    assert await handshake(server, strict) == version
                else:
                    with pytest.raises(ssl.SSLCertVerificationError):
                        await handshake(server, certs.client_context(authority.ca_path))

    run(scenario())


def test_server_tls_kind_unknown() -> None:
    with certs.LabCertificateAuthority() as authority:
        with pytest.raises(ValueError, match="unknown TLS kind 'tls9'"):
            certs.server_context_for(authority, HOSTNAME, "tls9")


# Robustness and lifecycle


def test_hostile_input_does_not_break_server(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.33") as server:
            client = await Client.connect(server)
            await client.reply()
            assert (await client.command("\x00\x01 \xff\xfe"))[0] == 502
            await client.send(b"EHLO \xc3\x28\xff\r\n")
            assert (await client.reply())[0] == 250
            assert (await client.command("x" * 3000))[0] == 500
            await client.send(b"NOOP\n")
            assert (await client.reply())[0] == 250
            for _ in range(MAX_COMMANDS_KEPT + 10):
                await client.send(b"NOOP\r\n")
            for _ in range(MAX_COMMANDS_KEPT + 10):
                await client.reply()
            await client.send(b"y" * (200 * 1024))
            assert await client.reply() == (500, ["5.5.2 Line too long"])
            # The server closes with unread input, so the kernel may send RST.
            try:
                assert await client.read_raw() == b""
            except ConnectionResetError:
                pass

            session = server.sessions[0]
            assert len(session.commands) == MAX_COMMANDS_KEPT
            assert session.commands_dropped > 0

            # The server still serves new clients.
            second = await Client.connect(server)
            assert (await second.reply())[0] == 220
            second.close()

    run(scenario())


def test_oversized_message_rejected(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.34") as server:
            client = await Client.connect(server)
            await client.reply()
            await client.command("EHLO client.test")
            await client.command("MAIL FROM:<a@c.test>")
            await client.command("RCPT TO:<postmaster@normal.test>")
            assert (await client.command("DATA"))[0] == 354
            await client.send(b"z" * (100 * 1024) + b"\r\n.\r\n")
            assert await client.reply() == (552, ["5.3.4 Message size exceeds fixed limit"])
            assert (await client.command("NOOP"))[0] == 250
            assert server.data_commands == 1
            client.close()

    run(scenario())


def test_idle_timeout(run: Runner) -> None:
    async def scenario() -> None:
        async with host("127.0.25.35", {"idle_timeout": 0.2}) as server:
            client = await Client.connect(server)
            await client.reply()
            code, lines = await client.reply(timeout=2)
            assert code == 421
            assert lines[0].startswith("4.4.2")
            assert await client.read_raw() == b""

    run(scenario())


def test_stop_closes_all_sessions(run: Runner) -> None:
    async def scenario() -> None:
        config = {"behaviour": "drip", "drip_interval": 0.05}
        server = host("127.0.25.36", config)
        await server.start()
        clients = [await Client.connect(server) for _ in range(20)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1
        for client in clients:
            async with asyncio.timeout(2):
                while await client.reader.read(4096):
                    pass
        assert server.connections == 20

    run(scenario())


def test_session_history_is_bounded(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_server, "MAX_SESSIONS_KEPT", 3)

    async def scenario() -> None:
        async with host("127.0.25.39") as server:
            for number in range(5):
                client = await Client.connect(server)
                await client.reply()
                await client.command(f"HELO client{number}.test")
                await client.command("QUIT")
                client.close()
            assert server.connections == 5
            assert [session.commands[0] for session in server.sessions] == [
                "HELO client2.test",
                "HELO client3.test",
                "HELO client4.test",
            ]

    run(scenario())


def test_hosts_share_one_port(run: Runner) -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.25.37", 0))
            port = probe.getsockname()[1]
        first = SmtpHost("127.0.25.37", port, "mx1.first.test", Behaviour())
        second = SmtpHost("127.0.25.38", port, "mx1.second.test", Behaviour())
        async with first, second:
            assert first.port == second.port == port
            for server, name in ((first, "mx1.first.test"), (second, "mx1.second.test")):
                client = await Client.connect(server)
                assert (await client.reply())[1][0].startswith(name)
                client.close()
        with pytest.raises(OSError):
            async with SmtpHost("127.0.25.37", port, "a.test"), SmtpHost("127.0.25.37", port, "b.test"):
                pass

    run(scenario())
