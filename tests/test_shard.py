"""Shards: disjoint, deterministic parts whose union is the whole sweep.

The end-to-end test runs three shard processes and one whole sweep side by side
against one lab, and compares the merged shards with the whole sweep domain by domain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labkit import world
from scanner.errors import ConfigError
from scanner.inputs import make_entry
from scanner.lab.background import BackgroundLab
from scanner.shard import Shard

ROOT = Path(__file__).resolve().parent.parent

SHARDS = 3
DOMAINS = 300

HOSTS = [
    ("127.0.42.1", "mx.big.shard.test", "esmtp"),
    ("127.0.42.2", "mx.helo.shard.test", "helo_only"),
    ("127.0.42.3", "mx.reject.shard.test", "banner_reject"),
    ("127.0.42.4", "mx.close.shard.test", "close_immediately"),
]


def shard_world() -> tuple[dict, list[str]]:
    records: dict = {name: {"A": [address]} for address, name, _ in HOSTS}
    domains = []
    for index in range(DOMAINS):
        domain = f"s{index:03}.shard.test"
        bucket = index % 10
        if bucket < 6:
            records[domain] = {"MX": [f"10 {HOSTS[index % len(HOSTS)][1]}."]}
        elif bucket == 6:
            records[domain] = {"MX": ["0 ."]}
        elif bucket == 7:
            records[domain] = {"A": ["127.0.42.1"]}
        # 8 and 9 are not in the zone: NXDOMAIN.
        domains.append(domain)
    domains += ["not_valid.shard.test", "S000.Shard.Test.", "1.2.3.4"]
    return world(records, HOSTS, dns_address="127.0.42.253"), domains


def run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for command in commands
    ]
    results = []
    for command, process in zip(commands, processes):
        stdout, stderr = process.communicate(timeout=90)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def records_by_key(path: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for line in path.read_bytes().splitlines():
        record = json.loads(line)
        key = record["query_name"] or record["domain"]
        assert key not in found, f"{key} twice in {path.name}"
        found[key] = record
    return found


def test_shards_union_equals_whole_sweep(tmp_path, record_schema):
    data, domains = shard_world()
    (tmp_path / "domains.txt").write_text("\n".join(domains) + "\n")
    with BackgroundLab(data) as lab:
        config = {
            "domains_file": "domains.txt",
            "resolvers": [lab.lab.resolver],
            "smtp": {"port": lab.lab.smtp_port, "ehlo_name": "scanner.test"},
            "policy": {"allow_private": True},
            "timeouts": {"connect": 2.0, "banner": 2.0, "reply": 2.0, "quit": 1.0, "host": 5.0},
            "dns": {"timeout": 2.0, "retries": 1},
            "tls": {"starttls": False},
        }
        config_path = tmp_path / "sweep.yaml"
        config_path.write_text(yaml.safe_dump(config))
        base = [sys.executable, "-m", "scanner", "-q", "scan", str(config_path)]
        commands = [base + ["-o", str(tmp_path / "whole.jsonl")]]
        commands += [base + ["-o", str(tmp_path / f"shard{k}.jsonl"), "--shard", f"{k}/{SHARDS}"] for k in range(SHARDS)]
        results = run_all(commands)

    for result in results:
        assert result.returncode == 0, result.stderr.decode()
    whole = records_by_key(tmp_path / "whole.jsonl")
    shards = [records_by_key(tmp_path / f"shard{k}.jsonl") for k in range(SHARDS)]

    merged: dict[str, dict] = {}
    for part in shards:
        assert part, "a shard of 300 domains came out empty"
        overlap = merged.keys() & part.keys()
        assert not overlap, f"keys in two shards: {sorted(overlap)[:5]}"
        merged.update(part)
    assert merged.keys() == whole.keys()
    assert len(whole) == DOMAINS + 2  # the duplicate S000.Shard.Test. is dropped
    for key, record in merged.items():
        record_schema.validate(record)
        assert (record["status"], record["reason"]) == (whole[key]["status"], whole[key]["reason"]), key


def test_shard_of_entry_is_stable():
    # The digest is BLAKE2b of the normalised name, so these values hold on every machine.
    shard = Shard(0, 7)
    entries = [make_entry(f"name{index}.example") for index in range(2000)]
    owned = [entry.name for entry in entries if shard.owns(entry)]
    assert 200 < len(owned) < 380
    assert owned == [entry.name for entry in entries if Shard(0, 7).owns(entry)]


def test_same_name_in_any_form_same_shard():
    forms = ["Example.ORG", "example.org.", " example.org ", "EXAMPLE.org"]
    for count in (2, 5, 16):
        shards = {index for index in range(count) for form in forms if Shard(index, count).owns(make_entry(form))}
        assert len(shards) == 1, (count, shards)


def test_every_entry_in_exactly_one_shard():
    entries = [make_entry(f"d{index}.test") for index in range(1000)] + [make_entry("bad_name.test"), make_entry("")]
    for count in (1, 2, 3, 8):
        for entry in entries:
            owners = [index for index in range(count) if Shard(index, count).owns(entry)]
            assert len(owners) == 1, (entry.given, owners)


@pytest.mark.parametrize("text", ["1", "1/", "/4", "a/4", "4/4", "5/4", "0/0", "-1/4", "1/4/2"])
def test_shard_parse_rejects(text):
    with pytest.raises(ConfigError):
        Shard.parse(text)


def test_shard_parse_accepts():
    assert Shard.parse("0/4") == Shard(0, 4)
    assert Shard.parse("3/4") == Shard(3, 4)
    assert str(Shard.parse("2/9")) == "2/9"
