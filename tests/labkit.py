"""Helpers for tests that sweep a lab world: build worlds and collect the records."""

from __future__ import annotations

import io
import json

from scanner.config import config_from_dict, with_overrides
from scanner.inputs import iter_entries
from scanner.lab.world import Lab
from scanner.output import LineWriter
from scanner.sweep import Sweep

# Short bounds so that tests of silent or slow servers end quickly.
FAST_TIMEOUTS = {"connect": 1.0, "banner": 1.0, "reply": 1.0, "quit": 0.5, "host": 3.0}


def world(records: dict, hosts: list[tuple[str, str, object]], behaviours: dict | None = None, dns_address: str = "127.0.53.1") -> dict:
    """Describe a lab world: zone records, DNS behaviours and (address, hostname, behaviour) hosts."""
    return {
        "dns": {"address": dns_address, "port": 0},
        "zone": {"records": records, "behaviours": behaviours or {}},
        "smtp": {"port": 0, "hosts": [{"address": a, "hostname": h, "behaviour": b} for a, h, b in hosts]},
    }


def host_per_behaviour(behaviours, prefix: str, subnet: str, records: dict | None = None, hosts: list | None = None):
    """Add one domain and one mail host per behaviour: ``{prefix}{i}.test`` with MX ``mx.{prefix}{i}.test``.

    Returns the records and hosts; host i listens on ``{subnet}.{i + 1}``.
    """
    records = dict(records or {})
    hosts = list(hosts or [])
    for index, behaviour in enumerate(behaviours):
        records[f"{prefix}{index}.test"] = {"MX": [f"10 mx.{prefix}{index}.test."]}
        records[f"mx.{prefix}{index}.test"] = {"A": [f"{subnet}.{index + 1}"]}
        hosts.append((f"{subnet}.{index + 1}", f"mx.{prefix}{index}.test", behaviour))
    return records, hosts


async def sweep_lab(lab: Lab, domains: list, **settings) -> list[dict]:
    """Sweep ``domains`` against ``lab`` and return the records, parsed, in output order."""
    data = {
        "domains": domains,
        "timeouts": dict(FAST_TIMEOUTS),
        # One retry, so that a loaded test machine does not turn a slow answer into dns_timeout.
        "dns": {"timeout": 1.0, "retries": 1},
        "policy": {"allow_private": True},
    }
    for key, value in settings.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    config = config_from_dict(data)
    overrides = {"resolvers": [lab.resolver], "smtp.ehlo_name": "scanner.test"}
    if lab.hosts:
        overrides["smtp.port"] = lab.smtp_port
    resolved = with_overrides(config.settings, overrides)
    stream = io.BytesIO()
    sweep = Sweep(resolved)
    try:
        await sweep.run(iter_entries(config.domains, config.domains_file), LineWriter(stream))
    finally:
        await sweep.close()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def by_domain(records: list[dict]) -> dict[str, dict]:
    return {record["domain"]: record for record in records}


def first_probe(record: dict) -> dict:
    return record["exchanges"][0]["addresses"][0]["probe"]
