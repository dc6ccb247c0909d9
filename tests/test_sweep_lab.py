"""Sweeps against the lab on loopback: each DNS and SMTP behaviour and the record it gives."""

from __future__ import annotations

import time

import pytest

from labkit import by_domain, first_probe, host_per_behaviour, sweep_lab, world
from scanner.lab.world import Lab

RECORDS = {
    "good.test": {"MX": ["20 mx2.good.test.", "10 mx1.good.test."]},
    "mx1.good.test": {"A": ["127.0.26.1"]},
    "mx2.good.test": {"A": ["127.0.26.2"], "AAAA": ["::1"]},
    "implicit.test": {"A": ["127.0.26.1"]},
    "nomail.test": {"MX": ["0 ."]},
    "txtonly.test": {"TXT": ["v=spf1 -all"]},
    "dangling.test": {"MX": ["10 gone.dangling.test."]},
    "literal.test": {"MX": ["10 127.0.26.1."]},
    "v6only.test": {"MX": ["10 mx.v6only.test."]},
    "mx.v6only.test": {"AAAA": ["::1"]},
    "alias.test": {"CNAME": ["good.test."]},
}
BEHAVIOURS = {"servfail.test": "servfail", "refused.test": "refused", "silent.test": "drop", "mismatch.test": "mismatch"}

SMTP_CASES = [
    # (behaviour, status, phase, reason, code)
    ("esmtp", "reachable", None, None, None),
    ("multiline_banner", "reachable", None, None, None),
    ("helo_only", "reachable", None, None, None),
    ({"behaviour": "banner_reject", "reject_code": 554, "reject_text": "5.7.1 No thanks"}, "unreachable", "banner", "banner_rejected", 554),
    ({"behaviour": "banner_reject", "reject_code": 450, "reject_text": "4.3.2 Try later"}, "unreachable", "banner", "banner_rejected", 450),
    ("busy_421", "unreachable", "banner", "banner_rejected", 421),
    ({"behaviour": "esmtp", "banner_delay": 0.3}, "reachable", None, None, None),
    ("no_banner", "unreachable", "banner", "banner_timeout", None),
    ("close_immediately", "unreachable", "banner", "connection_closed", None),
    ("reset", "unreachable", "banner", None, None),  # reset or closed, by kernel timing
    ({"behaviour": "ehlo_reject"}, "unreachable", "helo", "ehlo_rejected", None),
]


def smtp_world(cases):
    good_hosts = [("127.0.26.1", "mx1.good.test", "esmtp"), ("127.0.26.2", "mx2.good.test", "multiline_banner")]
    records, hosts = host_per_behaviour([case[0] for case in cases], "case", "127.0.27", RECORDS, good_hosts)
    return world(records, hosts, BEHAVIOURS)


def test_smtp_behaviours(run, record_schema):
    async def scenario():
        async with Lab.from_dict(smtp_world(SMTP_CASES)) as lab:
            started = time.monotonic()
            records = await sweep_lab(lab, [f"case{index}.test" for index in range(len(SMTP_CASES))])
            return records, time.monotonic() - started

    records, elapsed = run(scenario())
    assert len(records) == len(SMTP_CASES)
    found = by_domain(records)
    for index, (behaviour, status, phase, reason, code) in enumerate(SMTP_CASES):
        record = found[f"case{index}.test"]
        record_schema.validate(record)
        assert record["status"] == status, (behaviour, record)
        probe = first_probe(record)
        if status == "reachable":
            assert probe["completed"] is True
            assert probe["banner"]["code"] == 220
            continue
        assert probe["failure"]["phase"] == phase, (behaviour, probe)
        if reason is not None:
            assert probe["failure"]["reason"] == reason, (behaviour, probe)
            assert record["reason"] == reason
        else:
            assert probe["failure"]["reason"] in ("connection_reset", "connection_closed")
        if code is not None:
            assert probe["failure"]["code"] == code
    # no_banner waits out the 1 s banner timeout; nothing else should take long.
    assert elapsed < 3.0


def test_reachable_record_details(run, record_schema):
    async def scenario():
        async with Lab.from_dict(smtp_world([])) as lab:
            return await sweep_lab(lab, [{"domain": "Good.Test.", "tags": ["customer-a", "eu"]}])

    [record] = run(scenario())
    record_schema.validate(record)
    assert record["domain"] == "Good.Test."
    assert record["query_name"] == "good.test"
    assert record["tags"] == ["customer-a", "eu"]
    assert record["mx_source"] == "mx"
    assert [(e["preference"], e["name"]) for e in record["exchanges"]] == [(10, "mx1.good.test"), (20, "mx2.good.test")]

    probe = first_probe(record)
    assert probe["greeting"] == "ehlo"
    assert probe["ehlo"]["code"] == 250
    assert "PIPELINING" in probe["keywords"]
    assert probe["keywords"]["SIZE"].isdigit()
    assert probe["quit"]["code"] == 221
    assert set(probe["timings_ms"]) >= {"connect", "banner", "ehlo", "quit", "total"}

    mx2 = record["exchanges"][1]["addresses"]
    assert [a["family"] for a in mx2] == ["ipv4", "ipv6"]
    assert mx2[1]["probe"] is None
    assert mx2[1]["skipped"]["reason"] == "ipv6_disabled"
    assert record["started_at"].endswith("Z")


DNS_CASES = [
    # (domain, status, reason, mx_source)
    ("good.test", "reachable", None, "mx"),
    ("alias.test", "reachable", None, "mx"),
    ("implicit.test", "reachable", None, "implicit"),
    ("nomail.test", "null_mx", "null_mx", "null"),
    ("txtonly.test", "no_mail_domain", "no_mx_no_address", None),
    ("absent.test", "no_mail_domain", "nxdomain", None),
    ("servfail.test", "dns_error", "servfail", None),
    ("refused.test", "dns_error", "dns_refused", None),
    ("silent.test", "dns_error", "dns_timeout", None),
    ("mismatch.test", "dns_error", "dns_bad_response", None),
    ("dangling.test", "unreachable", "no_address", "mx"),
    ("literal.test", "unreachable", "exchange_is_ip_literal", "mx"),
    ("v6only.test", "not_probed", "ipv6_disabled", "mx"),
    ("not a domain", "invalid_input", "invalid_label", None),
    ("192.0.2.7", "invalid_input", "ip_address_given", None),
    ("", "invalid_input", "empty_name", None),
]


def test_dns_outcomes(run, record_schema):
    async def scenario():
        async with Lab.from_dict(smtp_world([])) as lab:
            return await sweep_lab(lab, [case[0] for case in DNS_CASES])

    records = run(scenario())
    assert len(records) == len(DNS_CASES)
    found = by_domain(records)
    for domain, status, reason, source in DNS_CASES:
        record = found[domain]
        record_schema.validate(record)
        assert (record["status"], record["reason"], record["mx_source"]) == (status, reason, source), record


def test_null_mx_is_never_probed(run):
    async def scenario():
        records = {"nomail.test": {"MX": ["0 ."], "A": ["127.0.26.1"]}}
        async with Lab.from_dict(world(records, [("127.0.26.1", "nomail.test", "esmtp")])) as lab:
            await sweep_lab(lab, ["nomail.test"])
            return lab.host("127.0.26.1").connections

    assert run(scenario()) == 0


def test_shared_address_probed_once(run):
    domains = [f"d{index}.test" for index in range(50)]
    records = {domain: {"MX": ["10 mx.shared.test."]} for domain in domains}
    records["mx.shared.test"] = {"A": ["127.0.26.9"]}

    async def scenario():
        async with Lab.from_dict(world(records, [("127.0.26.9", "mx.shared.test", "esmtp")])) as lab:
            results = await sweep_lab(lab, domains, concurrency=50)
            return results, lab.host("127.0.26.9").connections, lab.dns.query_counts

    results, connections, queries = run(scenario())
    assert len(results) == 50
    assert {record["status"] for record in results} == {"reachable"}
    assert connections == 1
    assert queries[("mx.shared.test", "A")] == 1


def test_ipv6_probed_when_enabled(run):
    records = {"v6.test": {"MX": ["10 mx.v6.test."]}, "mx.v6.test": {"AAAA": ["::1"]}}

    async def scenario():
        async with Lab.from_dict(world(records, [("::1", "mx.v6.test", "esmtp")])) as lab:
            return await sweep_lab(lab, ["v6.test"], smtp={"ipv6": True})

    [record] = run(scenario())
    assert record["status"] == "reachable"
    assert record["exchanges"][0]["addresses"][0]["family"] == "ipv6"


def test_duplicates_scanned_once(run):
    async def scenario():
        async with Lab.from_dict(smtp_world([])) as lab:
            return await sweep_lab(lab, ["good.test", "GOOD.test.", " good.test", "implicit.test"])

    records = run(scenario())
    assert sorted(record["domain"] for record in records) == ["good.test", "implicit.test"]


def test_server_text_is_escaped(run, record_schema):
    cases = [({"behaviour": "esmtp", "garbage_banner": True}, None)]

    async def scenario():
        async with Lab.from_dict(smtp_world(cases)) as lab:
            return await sweep_lab(lab, ["case0.test"])

    [record] = run(scenario())
    record_schema.validate(record)
    probe = first_probe(record)
    text = probe["banner"]["text"] if probe["banner"] else probe["failure"]["message"]
    assert all(line.isprintable() for line in text.split("\n"))
    assert "\\x" in text


@pytest.mark.parametrize("retries,expected_queries", [(0, 1), (2, 3)])
def test_dns_retries_setting(run, retries, expected_queries):
    async def scenario():
        async with Lab.from_dict(world({}, [], {"silent.test": "drop"})) as lab:
            records = await sweep_lab(lab, ["silent.test"], dns={"timeout": 0.2, "retries": retries})
            return records, lab.dns.query_counts[("silent.test", "MX")]

    [record], queries = run(scenario())
    assert record["reason"] == "dns_timeout"
    assert queries == expected_queries
