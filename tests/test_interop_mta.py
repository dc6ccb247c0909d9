"""The probe, the recipient probe and ``mxscan check`` against two real MTAs.

Postfix (mx.interop.test) and Exim (mx.exim.test) run from ``realservers_fixture``,
both with STARTTLS and a self-signed certificate made by the fixture, and Unbound
resolves their zones. Two implementations word and order their replies differently;
the verdicts must not depend on that. Every query goes to the fixture's Unbound on
127.0.55.1, and every session to the MTAs on 127.0.25.x.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from realservers_fixture import (  # noqa: F401  (pytest finds the fixtures by their names here)
    RealServers,
    real_exim,
    real_servers,
)
from scanner.check import CheckOptions, Painter, render, run_check
from scanner.config import config_from_dict, with_overrides
from scanner.inputs import iter_entries
from scanner.output import LineWriter
from scanner.sweep import Sweep

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

FAST_TIMEOUTS = {"connect": 3.0, "banner": 5.0, "reply": 5.0, "quit": 2.0, "host": 20.0}


def real_settings(servers: RealServers, **sections):
    data = {
        "domains": [],
        "timeouts": dict(FAST_TIMEOUTS),
        "dns": {"timeout": 2.0, "retries": 1},
        "policy": {"allow_private": True},
        "smtp": {"port": servers.smtp_port, "ehlo_name": "scanner.test"},
        **sections,
    }
    settings = config_from_dict(data).settings
    return with_overrides(settings, {"resolvers": [servers.resolver]})


def sweep_real(servers: RealServers, domains: list[str], **sections) -> dict[str, dict]:
    async def scenario():
        stream = io.BytesIO()
        sweep = Sweep(real_settings(servers, **sections))
        try:
            await sweep.run(iter_entries(tuple(domains), None), LineWriter(stream))
        finally:
            await sweep.close()
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    return {record["domain"]: record for record in asyncio.run(scenario())}


def only_address(record: dict) -> dict:
    [exchange] = record["exchanges"]
    [address] = exchange["addresses"]
    return address


def check_tls_facts(tls: dict, hostname: str) -> None:
    assert tls["offered"] is True
    assert tls["attempted"] is True
    assert tls["accepted"] is True
    assert tls["starttls"]["code"] == 220
    assert tls["handshake_completed"] is True
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["cipher"]
    assert tls["failure"] is None
    assert tls["ehlo"]["code"] == 250
    assert "STARTTLS" not in tls["keywords"]
    certificate = tls["certificate"]
    assert certificate["subject"] == f"CN={hostname}"
    assert certificate["san"] == [hostname]
    assert certificate["self_signed"] is True
    assert certificate["key_type"] == "EC"
    assert certificate["key_bits"] == 256
    assert 28 <= certificate["days_to_expiry"] <= 30
    assert tls["name_matches"] is True


def test_postfix_and_exim_tls_facts(real_servers, real_exim, record_schema):
    found = sweep_real(real_servers, ["interop.test", "exim.test"])
    for domain, hostname in (("interop.test", real_servers.postfix_hostname), ("exim.test", real_exim.hostname)):
        record = found[domain]
        record_schema.validate(record)
        assert record["status"] == "reachable", record
        probe = only_address(record)["probe"]
        check_tls_facts(probe["tls"], hostname)
        # The system trust store does not contain the fixture's self-signed certificate.
        assert probe["tls"]["chain_trusted"] is False
        assert probe["tls"]["chain_error"] == "self-signed certificate not in the trust store"
        assert probe["quit"]["code"] == 221


def test_postfix_recipient_verdicts(real_servers, record_schema):
    accepted = sweep_real(real_servers, ["interop.test"], recipient={"enabled": True, "catch_all": True}, transcript={"enabled": True})["interop.test"]
    unknown = sweep_real(real_servers, ["interop.test"], recipient={"enabled": True, "rcpt_template": "nobody-mxscan@{domain}"})["interop.test"]
    record_schema.validate(accepted)
    record_schema.validate(unknown)

    recipient = only_address(accepted)["recipient"]
    assert recipient["verdict"] == "accepted"
    assert recipient["tls"] is True
    assert recipient["mail_from"]["code"] == 250
    assert recipient["rcpt"]["code"] == 250
    assert recipient["rcpt"]["enhanced"] == "2.1.5"
    assert recipient["rset"]["code"] == 250
    assert recipient["catch_all"] is False
    assert recipient["catch_all_rcpt"]["code"] == 550
    assert recipient["catch_all_rcpt"]["enhanced"] == "5.1.1"
    sent = [line["line"] for line in recipient["transcript"] if line["dir"] == "C"]
    # Postfix advertises DSN, so RCPT carries NOTIFY; no DATA is ever sent in a sweep.
    assert "RCPT TO:<postmaster@interop.test> NOTIFY=SUCCESS,FAILURE" in sent
    assert "STARTTLS" in sent
    assert not any(line.upper().startswith("DATA") for line in sent)

    recipient = only_address(unknown)["recipient"]
    assert recipient["verdict"] == "unknown_user"
    assert recipient["rcpt"]["code"] == 550
    assert recipient["rcpt"]["enhanced"] == "5.1.1"


def test_exim_recipient_verdicts(real_servers, real_exim, record_schema):
    accepted = sweep_real(real_servers, ["exim.test"], recipient={"enabled": True, "catch_all": True}, transcript={"enabled": True})["exim.test"]
    record_schema.validate(accepted)
    recipient = only_address(accepted)["recipient"]
    assert recipient["verdict"] == "accepted"
    assert recipient["tls"] is True
    assert recipient["rcpt"]["code"] == 250
    assert recipient["catch_all"] is False
    assert recipient["catch_all_rcpt"]["code"] == 550
    assert recipient["catch_all_rcpt"]["enhanced"] == "5.1.1"
    sent = [line["line"] for line in recipient["transcript"] if line["dir"] == "C"]
    keywords = only_address(accepted)["probe"]["tls"]["keywords"]
    # Exim advertises DSN only when dsn_advertise_hosts is set, and exim.conf.in does
    # not set it, so RCPT goes out without NOTIFY.
    assert "DSN" not in keywords
    assert "RCPT TO:<postmaster@exim.test>" in sent
    assert not any(line.upper().startswith("DATA") for line in sent)

    relay = sweep_real(real_servers, ["exim.test"], recipient={"enabled": True, "rcpt_template": "someone@elsewhere.{domain}"})["exim.test"]
    recipient = only_address(relay)["recipient"]
    # Exim's relay refusal is 550 5.7.1: a policy block, not an unknown user.
    assert recipient["verdict"] == "policy_block"
    assert recipient["rcpt"]["enhanced"] == "5.7.1"


def test_check_against_postfix(real_servers, record_schema):
    settings = real_settings(real_servers)
    result = asyncio.run(run_check("interop.test", settings, CheckOptions(catch_all=True)))
    text = render(result, Painter(False), settings.resolvers)

    assert "MX    10  mx.interop.test  127.0.25.200" in text
    assert "  S: 220 mx.interop.test ESMTP Postfix interop test server" in text
    assert "  C: STARTTLS" in text
    assert "  -- TLS handshake completed: TLSv1." in text
    assert "recipient postmaster@interop.test: accepted" in text
    assert "the certificate is self-signed" in text
    assert "Result: interop.test is reachable" in text
