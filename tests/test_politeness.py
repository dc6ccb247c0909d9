"""Politeness: shared providers see one probe per address, a bounded number of open
connections and a bounded rate of new ones. A busy (421) or silent address is not
tried again in the same sweep."""

from __future__ import annotations

import json
import time

import uvloop

from labkit import FAST_TIMEOUTS, sweep_lab, world
from scanner.config import config_from_dict, with_overrides
from scanner.control import RunOptions
from scanner.lab.world import Lab
from scanner.sweep import sweep_to

SHARED_BY = 40


def test_busy_and_silent_addresses_tried_once():
    hosts = [
        ("127.0.44.1", "mx.busy.polite.test", "busy_421"),
        ("127.0.44.2", "mx.silent.polite.test", "no_banner"),
    ]
    records = {name: {"A": [address]} for address, name, _ in hosts}
    domains = []
    for index in range(SHARED_BY):
        for _, name, _ in hosts:
            domain = f"p{index}.{name.split('.')[1]}.polite.test"
            records[domain] = {"MX": [f"10 {name}."]}
            domains.append(domain)

    async def scenario():
        async with Lab.from_dict(world(records, hosts, dns_address="127.0.44.253")) as lab:
            # The recipient probe would open one session per domain; it must not
            # run against an address whose handshake did not complete.
            found = await sweep_lab(lab, domains, concurrency=100, recipient={"enabled": True, "per_address_rate": 0})
            return found, {host.address: host.connections for host in lab.hosts}

    found, connections = uvloop.run(scenario())
    assert len(found) == 2 * SHARED_BY
    assert all(record["status"] == "unreachable" for record in found)
    reasons = {record["reason"] for record in found}
    assert len(reasons) == 2, reasons
    assert connections == {"127.0.44.1": 1, "127.0.44.2": 1}


def _paced_sweep(tmp_path, hosts: int, delay: float, max_connections: int, connection_rate: float) -> tuple[float, list[dict]]:
    host_list = [(f"127.0.45.{index + 1}", f"mx{index}.pace.test", {"behaviour": "esmtp", "banner_delay": delay}) for index in range(hosts)]
    records = {name: {"A": [address]} for address, name, _ in host_list}
    domains = []
    for index, (_, name, _) in enumerate(host_list):
        records[f"d{index}.pace.test"] = {"MX": [f"10 {name}."]}
        domains.append(f"d{index}.pace.test")

    async def scenario():
        async with Lab.from_dict(world(records, host_list, dns_address="127.0.45.253")) as lab:
            config = config_from_dict({
                "domains": domains,
                "timeouts": dict(FAST_TIMEOUTS),
                "policy": {"allow_private": True},
                "tls": {"starttls": False},
                "max_connections": max_connections,
            })
            settings = with_overrides(config.settings, {"resolvers": [lab.resolver], "smtp.port": lab.smtp_port, "smtp.ehlo_name": "scanner.test"})
            started = time.monotonic()
            await sweep_to(config, settings, tmp_path / "out.jsonl", RunOptions(connection_rate=connection_rate))
            return time.monotonic() - started

    elapsed = uvloop.run(scenario())
    return elapsed, [json.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]


def test_connection_rate_spaces_starts(tmp_path):
    # 12 connections at 10 per second: the last starts 1.1 s after the first.
    elapsed, found = _paced_sweep(tmp_path, hosts=12, delay=0.0, max_connections=0, connection_rate=10)
    assert len(found) == 12
    assert all(record["status"] == "reachable" for record in found)
    assert elapsed >= 1.05, elapsed
    # A paced wait happens before the host deadline starts: no phase is slow.
    for record in found:
        probe = record["exchanges"][0]["addresses"][0]["probe"]
        assert probe["timings_ms"]["total"] < 1000, probe["timings_ms"]


def test_connection_bound_holds(tmp_path):
    # 8 hosts that wait 0.4 s before their banner, 2 connections at a time: 4 rounds.
    elapsed, found = _paced_sweep(tmp_path, hosts=8, delay=0.4, max_connections=2, connection_rate=0)
    assert len(found) == 8
    assert all(record["status"] == "reachable" for record in found)
    assert elapsed >= 1.6, elapsed
