"""``mxscan check``: the manual test on lab domains, its explanation and its JSON record."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from labkit import FAST_TIMEOUTS
from scanner.check import CheckOptions, Painter, CheckMessage, escape_control, render, run_check
from scanner.config import Settings, with_overrides
from scanner.errors import ConfigError
from scanner.output import encode_line
from test_tls import tls_lab

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent

CASES = [
    # (label, server TLS kind, lab behaviour), one host each on 127.0.40.x
    ("good", "valid", "esmtp"),
    ("ehlo501", None, "ehlo_reject"),
    ("auth", None, "auth_required"),
    ("unknown", None, {"behaviour": "esmtp", "recipients": {"*": "unknown"}}),
    ("hostile", "self_signed", {"behaviour": "esmtp", "garbage_banner": True}),
]
# A domain whose MX hosts cover every case, plus one address where nothing listens.
EXTRA_RECORDS = {
    "all.check.test": {"MX": [f"{10 * (index + 1)} mx.{label}.tls.test." for index, (label, _, _) in enumerate(CASES)] + ["90 down.check.test."]},
    "down.check.test": {"A": ["127.0.40.99"]},
}


def lab_settings(lab, ca_file: str) -> Settings:
    overrides = {
        "resolvers": [lab.resolver],
        "smtp.port": lab.smtp_port,
        "smtp.ehlo_name": "scanner.test",
        "policy.allow_private": True,
        "tls.ca_file": ca_file,
        "dns.timeout": 0.5,
        "dns.retries": 0,
    }
    overrides.update({f"timeouts.{key}": value for key, value in FAST_TIMEOUTS.items()})
    return with_overrides(Settings(), overrides)


def run_lab_check(run, domain: str, options: CheckOptions | None = None):
    async def scenario():
        async with tls_lab(CASES, EXTRA_RECORDS) as (lab, ca_file):
            result = await run_check(domain, lab_settings(lab, ca_file), options or CheckOptions())
            data = {host.hostname: host.data_commands for host in lab.hosts}
            connections = sum(host.connections for host in lab.hosts)
            return result, data, connections, lab.resolver

    return run(scenario())


def test_check_explains_each_failure(run, record_schema):
    result, data, connections, resolver = run_lab_check(run, "all.check.test")
    text = render(result, Painter(False), (resolver,))
    record = json.loads(encode_line(result))
    record_schema.validate(record)

    assert sum(data.values()) == 0
    # One session per reachable address: the probe and the recipient steps share it.
    assert connections == len(CASES)
    assert record["status"] == "reachable"

    # The MX lookup: preferences, exchanges and addresses.
    assert f"MX lookup for all.check.test (resolver {resolver})" in text
    assert "MX    10  mx.good.tls.test" in text
    assert "127.0.40.1" in text
    assert "MX    90  down.check.test" in text

    # The session, line by line, as telnet shows it.
    assert "  S: 220 mx.good.tls.test ESMTP mxscan lab" in text
    assert "  C: EHLO scanner.test" in text
    assert "  C: STARTTLS" in text
    assert "  -- TLS handshake completed: TLSv1.3" in text
    assert "  C: MAIL FROM:<>" in text
    assert "  C: RCPT TO:<postmaster@all.check.test> NOTIFY=SUCCESS,FAILURE" in text
    assert "  C: RSET" in text
    assert "  C: DATA" not in text

    # A verdict per host, and the likely causes of each failure.
    assert "Verdict for mx.good.tls.test [127.0.40.1]" in text
    assert "recipient postmaster@all.check.test: accepted" in text
    assert "the SMTP service on the host is down" in text
    assert "a firewall at either end blocks the connection" in text
    assert "the MX host name or its address record points to the wrong machine" in text
    assert "the port is wrong" in text
    assert "the name sent in EHLO is not a valid domain" in text
    assert "the server restricts which clients may connect" in text
    assert "the server does not accept anonymous submission" in text
    assert "there is no such recipient" in text
    assert "the certificate is self-signed" in text
    assert "Result: all.check.test is reachable" in text


def test_check_escapes_server_text(run):
    result, _data, _connections, resolver = run_lab_check(run, "hostile.tls.test")
    text = render(result, Painter(False), (resolver,))
    coloured = render(result, Painter(True), (resolver,))

    assert "\x1b" not in text
    assert "\x00" not in text
    assert "S: 220-ansi \\x1b[31mred\\x1b[0m \\x1b[2J" in text
    assert "S: 220-nul \\x00 byte" in text
    # Colour codes come only from mxscan, and the server's escape stays escaped.
    assert "\x1b[36m" in coloured
    assert "\x1b[31mred" not in coloured


def test_check_send_delivers_once(run):
    message = CheckMessage(sender="me@scanner.test", recipient="postmaster@all.check.test", subject="Test", body="Hello\n.leading dot\n")
    options = CheckOptions(rcpt="postmaster@all.check.test", sender="me@scanner.test", message=message)
    result, data, _connections, resolver = run_lab_check(run, "all.check.test", options)

    # Only the most preferred host that accepted the recipient gets the message.
    assert data == {"mx.good.tls.test": 1, "mx.ehlo501.tls.test": 0, "mx.auth.tls.test": 0, "mx.unknown.tls.test": 0, "mx.hostile.tls.test": 0}
    recipient = result.exchanges[0].addresses[0].recipient
    assert recipient.data.code == 354
    assert recipient.data_end.code == 250
    assert recipient.tls is True
    lines = [entry.line for entry in recipient.transcript]
    assert "..leading dot" in lines  # dot-stuffed (RFC 5321 section 4.5.2)
    assert lines[lines.index("..leading dot") + 1] == "."
    text = render(result, Painter(False), (resolver,))
    assert "Test message session with mx.good.tls.test" in text
    assert "test message: 250 2.0.0 Message accepted" in text


def test_check_unknown_domain(run):
    result, _data, connections, resolver = run_lab_check(run, "absent.check.test")
    text = render(result, Painter(False), (resolver,))
    assert connections == 0
    assert "Result: absent.check.test is no mail domain (nxdomain" in text
    assert "the domain does not exist in DNS" in text


def test_check_options_validated():
    with pytest.raises(ConfigError, match="--rcpt"):
        CheckOptions(rcpt="no-at-sign")
    with pytest.raises(ConfigError, match="--sender"):
        CheckOptions(sender="a@b\r\nDATA")


def test_escape_control_table():
    assert escape_control("plain text") == "plain text"
    assert escape_control("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert escape_control("tab\there") == "tab\\x09here"
    assert escape_control("bidi \u202e override") == "bidi \\u202e override"
    assert escape_control("caf\u00e9") == "caf\u00e9"


def test_test_message_headers():
    message = CheckMessage(sender="me@scanner.test", recipient="you@example.test", subject="Hi", body="Body\n").to_bytes()
    assert b"From: me@scanner.test\r\n" in message
    assert b"Subject: Hi\r\n" in message
    assert b"@scanner.test>\r\n" in message  # Message-ID domain from the sender, not getfqdn()


async def _cli(lab, ca_file: str, *arguments: str) -> tuple[int, bytes, bytes]:
    command = [
        sys.executable, "-m", "scanner", "check",
        "--resolver", lab.resolver, "--port", str(lab.smtp_port), "--allow-private",
        "--ehlo-name", "scanner.test", "--ca-file", ca_file, "--connect-timeout", "1",
        *arguments,
    ]
    process = await asyncio.create_subprocess_exec(*command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, stdout, stderr


def test_check_command_line(run, record_schema):
    async def scenario():
        async with tls_lab(CASES, EXTRA_RECORDS) as (lab, ca_file):
            as_json = await _cli(lab, ca_file, "good.tls.test", "--json")
            as_text = await _cli(lab, ca_file, "ehlo501.tls.test")
            no_sender = await _cli(lab, ca_file, "good.tls.test", "--send")
            return as_json, as_text, no_sender, sum(host.data_commands for host in lab.hosts)

    as_json, as_text, no_sender, data_commands = run(scenario())

    status, stdout, _stderr = as_json
    assert status == 0
    [line] = stdout.splitlines()
    record = json.loads(line)
    record_schema.validate(record)
    assert record["exchanges"][0]["addresses"][0]["recipient"]["verdict"] == "accepted"
    assert record["exchanges"][0]["addresses"][0]["probe"]["tls"]["chain_trusted"] is True

    status, stdout, _stderr = as_text
    assert status == 1
    assert b"\x1b[" not in stdout  # not a terminal, so no colour
    assert b"Result: ehlo501.tls.test is unreachable" in stdout

    status, _stdout, stderr = no_sender
    assert status == 2
    assert b"--send needs --sender and --rcpt" in stderr
    assert data_commands == 0
