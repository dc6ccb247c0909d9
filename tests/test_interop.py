"""Interop: sweep through a real Unbound (in front of a real NSD) to a real Postfix."""

from __future__ import annotations

import io
import json

import pytest
import uvloop

from realservers_fixture import real_servers  # noqa: F401  (pytest finds the fixture by name)
from scanner.config import config_from_dict, with_overrides
from scanner.inputs import iter_entries
from scanner.output import LineWriter
from scanner.sweep import Sweep

pytestmark = pytest.mark.interop


async def sweep(servers, domains: list[str]) -> list[dict]:
    config = config_from_dict({
        "domains": domains,
        "policy": {"allow_private": True},
        "dns": {"timeout": 2, "retries": 1},
        "timeouts": {"connect": 5, "banner": 10, "reply": 10, "quit": 2, "host": 30},
    })
    settings = with_overrides(config.settings, {
        "resolvers": [servers.resolver],
        "smtp.port": servers.smtp_port,
        "smtp.ehlo_name": "scanner.test",
    })
    stream = io.BytesIO()
    run = Sweep(settings)
    try:
        await run.run(iter_entries(config.domains, None), LineWriter(stream))
    finally:
        await run.close()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_sweep_real_postfix_through_unbound(real_servers, record_schema):  # noqa: F811
    found = {record["domain"]: record for record in uvloop.run(sweep(real_servers, ["interop.test", "absent.interop.test"]))}

    record = found["interop.test"]
    record_schema.validate(record)
    assert record["status"] == "reachable", record
    assert record["mx_source"] == "mx"
    [exchange] = record["exchanges"]
    assert (exchange["preference"], exchange["name"]) == (10, real_servers.postfix_hostname)
    [address] = exchange["addresses"]
    assert address["address"] == real_servers.postfix_address

    probe = address["probe"]
    assert probe["banner"]["code"] == 220
    # Postfix's banner is "$myhostname ESMTP $mail_name" unless configured otherwise.
    assert probe["banner"]["text"].startswith(real_servers.postfix_hostname)
    assert "Postfix" in probe["banner"]["text"]
    assert probe["greeting"] == "ehlo"
    keywords = probe["keywords"]
    for keyword in ("PIPELINING", "SIZE", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN"):
        assert keyword in keywords, keywords
    assert probe["quit"]["code"] == 221
    assert probe["quit"]["enhanced"] == "2.0.0"

    absent = found["absent.interop.test"]
    record_schema.validate(absent)
    assert (absent["status"], absent["reason"]) == ("no_mail_domain", "nxdomain")
