"""One sweep mixing every lab behaviour and bad entry, at high concurrency."""

from __future__ import annotations

import time

import uvloop

from labkit import FAST_TIMEOUTS, sweep_lab, world
from scanner.lab.behaviours import PRESETS
from scanner.lab.world import Lab

DOMAINS_PER_HOST = 12
LAB_RANGE = "127.0.33.0/24"
FORBIDDEN = "127.0.34.1"

BAD_ENTRIES = ["", "   ", "bad..name", "-dash.test", "under_score.test", "192.0.2.1", "[::1]", "x" * 300, "single", "xn--zz.test", 42, {"domain": 7}, {"tags": ["no-domain"]}]
DNS_BEHAVIOURS = {"servfail.mixed.test": "servfail", "refused.mixed.test": "refused", "silent.mixed.test": "drop", "mismatch.mixed.test": "mismatch", "garbage.mixed.test": "garbage", "formerr.mixed.test": "formerr", "trunc.mixed.test": "truncate"}


def mixed_world():
    records, hosts, domains = {}, [], []
    # One host per preset. Slow presets such as drip keep their defaults, so only the
    # sweep's own deadlines stop them.
    for index, preset in enumerate(sorted(PRESETS)):
        address = f"127.0.33.{index + 1}"
        host = f"mx.{preset.replace('_', '-')}.mixed.test"
        records[host] = {"A": [address]}
        hosts.append((address, host, preset))
        for copy in range(DOMAINS_PER_HOST):
            domain = f"{preset.replace('_', '-')}-{copy}.mixed.test"
            records[domain] = {"MX": [f"10 {host}."]}
            domains.append(domain)

    records["mx.forbidden.mixed.test"] = {"A": [FORBIDDEN, "10.0.0.1", "169.254.0.1"]}
    hosts.append((FORBIDDEN, "mx.forbidden.mixed.test", "esmtp"))
    for copy in range(DOMAINS_PER_HOST):
        records[f"forbidden-{copy}.mixed.test"] = {"MX": ["10 mx.forbidden.mixed.test."]}
        domains.append(f"forbidden-{copy}.mixed.test")

    # Fifty MX records do not fit a 512-byte UDP answer, so this one needs TCP.
    records["trunc.mixed.test"] = {"MX": ["0 mx.esmtp.mixed.test."] + [f"{index + 1} mx{index}.trunc.mixed.test." for index in range(50)]}
    for name in DNS_BEHAVIOURS:
        domains.append(name)
    domains.extend(["absent.mixed.test", "nomail.mixed.test", "literal.mixed.test"])
    records["nomail.mixed.test"] = {"MX": ["0 ."]}
    records["literal.mixed.test"] = {"MX": ["10 127.0.33.1."]}
    return world(records, hosts, DNS_BEHAVIOURS), domains + BAD_ENTRIES


def test_mixed_sweep_high_concurrency(record_schema):
    description, entries = mixed_world()

    async def scenario():
        async with Lab.from_dict(description) as lab:
            started = time.monotonic()
            found = await sweep_lab(lab, entries, concurrency=300, policy={"allow_private": False, "allow": [LAB_RANGE]})
            return found, time.monotonic() - started, lab.host(FORBIDDEN).connections

    found, elapsed, forbidden_connections = uvloop.run(scenario())

    assert len(found) == len(entries)
    for record in found:
        record_schema.validate(record)
    assert forbidden_connections == 0

    for record in found:
        if record["domain"].startswith("forbidden-"):
            assert record["status"] == "not_probed", record
            skipped = [address["skipped"]["reason"] for address in record["exchanges"][0]["addresses"]]
            assert skipped == ["address_not_global"] * 3

    statuses = {record["status"] for record in found}
    assert {"reachable", "unreachable", "dns_error", "no_mail_domain", "null_mx", "not_probed", "invalid_input"} <= statuses
    assert "scanner_error" not in statuses

    # Every session is bounded by the host deadline and DNS by its timeout; the sweep
    # runs them in parallel, so it ends within a few deadlines, not the sum of them.
    assert elapsed < FAST_TIMEOUTS["host"] * 3, elapsed
