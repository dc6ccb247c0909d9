"""Two lab sweeps, a night apart, that differ in every diff change type.

The other test_ops modules import ``lab_sweeps`` from here. Both sweeps are real
sweeps of lab worlds on loopback, except for TLS versions and certificates. The lab
hosts have no certificate to complete a handshake with, so ``add_tls`` writes
``probe.tls`` objects into the swept records, in the shape the probe produces. It does
so only for the domains whose TLS version or certificate changes are tested.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import uvloop

from labkit import by_domain, sweep_lab, world
from scanner.lab.world import Lab

# Each domain shows one change type between the old and the new sweep.
EXPECTED_CHANGES = {
    ("became-unreachable.test", "became_unreachable"),
    ("became-reachable.test", "became_reachable"),
    ("reason.test", "status_changed"),
    ("moved.test", "mx_changed"),
    ("renumbered.test", "addresses_changed"),
    ("banner.test", "banner_changed"),
    ("tls-lost.test", "starttls_lost"),
    ("tls-gained.test", "starttls_gained"),
    ("tls-version.test", "tls_version_lowered"),
    ("cert-changed.test", "certificate_changed"),
    ("cert-expiring.test", "certificate_expiring"),
    ("added.test", "domain_added"),
    ("removed.test", "domain_removed"),
}
UNCHANGED = ["stable.test", "nomail.test", "servfail.test", "not a domain"]

COMMON_DOMAINS = [
    "stable.test", "nomail.test", "servfail.test", "not a domain",
    "became-unreachable.test", "became-reachable.test", "reason.test", "moved.test",
    "renumbered.test", "banner.test", "tls-lost.test", "tls-gained.test",
    "tls-version.test", "cert-changed.test", "cert-expiring.test",
]
OLD_DOMAINS = [*COMMON_DOMAINS, {"domain": "removed.test", "tags": ["customer-b"]}]
NEW_DOMAINS = [*COMMON_DOMAINS, {"domain": "added.test", "tags": ["customer-c"]}]


def _records(renumbered_address: str, moved_target: str) -> dict:
    records = {
        "stable.test": {"MX": ["10 mx.stable.test."]},
        "mx.stable.test": {"A": ["127.0.30.1"]},
        "nomail.test": {"MX": ["0 ."]},
        "moved.test": {"MX": [f"10 {moved_target}."]},
        "mx.moved.test": {"A": ["127.0.30.4"]},
        "renumbered.test": {"MX": ["10 mx.renumbered.test."]},
        "mx.renumbered.test": {"A": [renumbered_address]},
        "removed.test": {"MX": ["10 mx.stable.test."]},
        "added.test": {"MX": ["10 mx.stable.test."]},
    }
    # One exchange per remaining domain, each on its own address.
    own = {
        "became-unreachable.test": "127.0.30.2",
        "became-reachable.test": "127.0.30.3",
        "reason.test": "127.0.30.10",
        "banner.test": "127.0.30.7",
        "tls-lost.test": "127.0.30.8",
        "tls-gained.test": "127.0.30.9",
        "tls-version.test": "127.0.30.11",
        "cert-changed.test": "127.0.30.12",
        "cert-expiring.test": "127.0.30.13",
    }
    for domain, address in own.items():
        records[domain] = {"MX": [f"10 mx.{domain}."]}
        records[f"mx.{domain}"] = {"A": [address]}
    return records


def _hosts(*hosts: tuple[str, str, object]) -> list[tuple[str, str, object]]:
    shared = [
        ("127.0.30.1", "mx.stable.test", "esmtp"),
        ("127.0.30.4", "mx.moved.test", "esmtp"),
        ("127.0.30.5", "mx.renumbered.test", "esmtp"),
        ("127.0.30.6", "mx.renumbered.test", "esmtp"),
        ("127.0.30.11", "mx.tls-version.test", "esmtp"),
        ("127.0.30.12", "mx.cert-changed.test", "esmtp"),
        ("127.0.30.13", "mx.cert-expiring.test", "esmtp"),
    ]
    return shared + list(hosts)


OLD_WORLD = world(
    _records("127.0.30.5", "mx.stable.test"),
    _hosts(
        ("127.0.30.2", "mx.became-unreachable.test", "esmtp"),
        # 127.0.30.3 has no server: connection refused
        ("127.0.30.10", "mx.reason.test", {"behaviour": "banner_reject", "reject_code": 554, "reject_text": "5.7.1 Your network is blocked"}),
        ("127.0.30.7", "mx.banner.test", {"behaviour": "esmtp", "banner_text": "mx.banner.test ESMTP Postfix (Debian)"}),
        # starttls_454 lists STARTTLS in its EHLO reply (and fails it with 454 when tried).
        ("127.0.30.8", "mx.tls-lost.test", "starttls_454"),
        ("127.0.30.9", "mx.tls-gained.test", "esmtp"),
    ),
    {"servfail.test": "servfail"},
)

NEW_WORLD = world(
    _records("127.0.30.6", "mx.moved.test"),
    _hosts(
        # 127.0.30.2 has no server any more: connection refused
        ("127.0.30.3", "mx.became-reachable.test", "esmtp"),
        # 127.0.30.10 has no server any more: still unreachable, another reason
        ("127.0.30.7", "mx.banner.test", {"behaviour": "esmtp", "banner_text": "mx.banner.test ESMTP Exim 4.96"}),
        ("127.0.30.8", "mx.tls-lost.test", "esmtp"),
        ("127.0.30.9", "mx.tls-gained.test", "starttls_454"),
    ),
    {"servfail.test": "servfail"},
)

SHA_A = "a1" * 32
SHA_B = "b2" * 32
SHA_C = "c3" * 32


def certificate(sha256: str, days: int, not_after: str, subject: str = "CN=mx.lab.test") -> dict:
    return {
        "subject": subject,
        "san": ["mx.lab.test"],
        "issuer": "CN=mxscan lab CA",
        "serial": "1000",
        "not_before": "2026-01-01T00:00:00Z",
        "not_after": not_after,
        "days_to_expiry": days,
        "key_type": "EC",
        "key_bits": 256,
        "signature_algorithm": "ecdsa-with-SHA256",
        "self_signed": False,
        "sha256": sha256,
    }


def tls_facts(version: str | None, cert: dict | None) -> dict:
    return {
        "offered": True,
        "attempted": True,
        "accepted": True,
        "handshake_completed": version is not None,
        "version": version,
        "cipher": "TLS_AES_256_GCM_SHA384" if version == "TLSv1.3" else "ECDHE-ECDSA-AES256-GCM-SHA384",
        "certificate": cert,
        "chain_trusted": False,
        "name_matches": True,
    }


# (domain, old tls, new tls) written into the swept records.
TLS_EDITS = [
    ("stable.test", tls_facts("TLSv1.3", certificate(SHA_C, 200, "2027-06-01T00:00:00Z")), tls_facts("TLSv1.3", certificate(SHA_C, 199, "2027-06-01T00:00:00Z"))),
    ("tls-version.test", tls_facts("TLSv1.3", certificate(SHA_C, 200, "2027-06-01T00:00:00Z")), tls_facts("TLSv1.2", certificate(SHA_C, 199, "2027-06-01T00:00:00Z"))),
    ("cert-changed.test", tls_facts("TLSv1.3", certificate(SHA_A, 60, "2027-02-01T00:00:00Z")), tls_facts("TLSv1.3", certificate(SHA_B, 365, "2027-12-01T00:00:00Z"))),
    ("cert-expiring.test", tls_facts("TLSv1.3", certificate(SHA_A, 15, "2026-12-20T00:00:00Z")), tls_facts("TLSv1.3", certificate(SHA_A, 14, "2026-12-20T00:00:00Z"))),
]


def add_tls(record: dict, tls: dict) -> dict:
    """Return a copy of ``record`` with ``tls`` in every probe of every address."""
    edited = copy.deepcopy(record)
    for exchange in edited["exchanges"]:
        for address in exchange["addresses"]:
            if address["probe"] is not None:
                address["probe"]["tls"] = copy.deepcopy(tls)
    return edited


async def _sweep(world_data: dict, domains: list) -> list[dict]:
    async with Lab.from_dict(world_data) as lab:
        return await sweep_lab(lab, domains)


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


_CACHE: dict[str, tuple[Path, Path, list[dict], list[dict]]] = {}


def lab_sweeps(tmp_path_factory) -> tuple[Path, Path, list[dict], list[dict]]:
    """Sweep the old and the new world once per test session and return (old file, new file, old records, new records).

    The returned records are the swept ones before the TLS edits; the files hold the edited ones.
    """
    if "sweeps" in _CACHE:
        return _CACHE["sweeps"]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        old_records = runner.run(_sweep(OLD_WORLD, OLD_DOMAINS))
        new_records = runner.run(_sweep(NEW_WORLD, NEW_DOMAINS))

    old_edited, new_edited = by_domain(old_records), by_domain(new_records)
    for domain, old_tls, new_tls in TLS_EDITS:
        old_edited[domain] = add_tls(old_edited[domain], old_tls)
        new_edited[domain] = add_tls(new_edited[domain], new_tls)

    folder = tmp_path_factory.mktemp("sweeps")
    old_path, new_path = folder / "old.jsonl", folder / "new.jsonl"
    # Keep the sweeps' completion order: the diff must not rely on sorted input.
    _write(old_path, [old_edited[record["domain"]] for record in old_records])
    _write(new_path, [new_edited[record["domain"]] for record in new_records])
    _CACHE["sweeps"] = (old_path, new_path, old_records, new_records)
    return _CACHE["sweeps"]


def test_lab_sweeps_differ_as_planned(tmp_path_factory):
    _old_path, _new_path, old_records, new_records = lab_sweeps(tmp_path_factory)
    old, new = by_domain(old_records), by_domain(new_records)

    assert (old["became-unreachable.test"]["status"], new["became-unreachable.test"]["status"]) == ("reachable", "unreachable")
    assert (old["became-reachable.test"]["status"], new["became-reachable.test"]["status"]) == ("unreachable", "reachable")
    assert (old["reason.test"]["reason"], new["reason.test"]["reason"]) == ("banner_rejected", "connection_refused")
    assert "STARTTLS" in old["tls-lost.test"]["exchanges"][0]["addresses"][0]["probe"]["keywords"]
    assert "STARTTLS" not in new["tls-lost.test"]["exchanges"][0]["addresses"][0]["probe"]["keywords"]
    assert "removed.test" in old
    assert "removed.test" not in new
    assert "added.test" in new
    assert "added.test" not in old
    for domain in UNCHANGED:
        assert old[domain]["status"] == new[domain]["status"], domain
