"""A 10,000-domain lab sweep: exactly one valid line per domain, within its bounds."""

from __future__ import annotations

import time

import pytest
import uvloop

from labkit import sweep_lab, world
from scanner.lab.world import Lab

DOMAINS = 10_000

# A few providers serve most domains, as on the internet; some hosts misbehave.
HOSTS = [
    ("127.0.30.1", "mx.big1.test", "esmtp"),
    ("127.0.30.2", "mx.big2.test", "multiline_banner"),
    ("127.0.30.3", "mx.small.test", "helo_only"),
    ("127.0.30.4", "mx.reject.test", "banner_reject"),
    ("127.0.30.5", "mx.silent.test", "no_banner"),
    ("127.0.30.6", "mx.close.test", "close_immediately"),
]


def build_records() -> tuple[dict, dict]:
    records: dict = {}
    expected: dict = {}
    for address, name, _behaviour in HOSTS:
        records[name] = {"A": [address]}
    for index in range(DOMAINS):
        domain = f"d{index:05}.test"
        bucket = index % 100
        if bucket < 60:
            records[domain] = {"MX": ["10 mx.big1.test."]}
            expected[domain] = "reachable"
        elif bucket < 85:
            records[domain] = {"MX": ["10 mx.big2.test.", "20 mx.big1.test."]}
            expected[domain] = "reachable"
        elif bucket < 90:
            records[domain] = {"MX": ["10 mx.small.test."]}
            expected[domain] = "reachable"
        elif bucket < 93:
            records[domain] = {"MX": ["10 mx.reject.test."]}
            expected[domain] = "unreachable"
        elif bucket < 95:
            records[domain] = {"MX": ["10 mx.silent.test."]}
            expected[domain] = "unreachable"
        elif bucket < 97:
            records[domain] = {"MX": ["10 mx.close.test."]}
            expected[domain] = "unreachable"
        elif bucket < 98:
            records[domain] = {"MX": ["0 ."]}
            expected[domain] = "null_mx"
        elif bucket < 99:
            expected[domain] = "no_mail_domain"  # not in the zone: NXDOMAIN
        else:
            records[domain] = {"A": ["127.0.30.1"]}
            expected[domain] = "reachable"
    return records, expected


@pytest.mark.slow
def test_ten_thousand_domains(record_schema):
    # One loop only: this test is about volume, and the sweep's own loop is uvloop.
    records, expected = build_records()

    async def scenario():
        async with Lab.from_dict(world(records, HOSTS)) as lab:
            started = time.monotonic()
            # The lab shares this event loop with the sweep, so DNS answers wait behind
            # probes; the DNS timeout is sized for that, not for a remote resolver.
            found = await sweep_lab(lab, sorted(expected), concurrency=500, dns={"timeout": 5.0, "retries": 1})
            return found, time.monotonic() - started, [host.connections for host in lab.hosts]

    found, elapsed, connections = uvloop.run(scenario())
    assert len(found) == DOMAINS
    assert len({record["domain"] for record in found}) == DOMAINS
    for record in found:
        record_schema.validate(record)
        assert record["status"] == expected[record["domain"]], record
    # Each lab address is probed once however many domains share it.
    assert connections == [1] * len(HOSTS)
    # The silent host costs one banner timeout (1 s); DNS and the rest are fast.
    assert elapsed < 60, elapsed
