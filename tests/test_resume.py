"""Stop and resume: SIGTERM and kill -9 in the middle of a sweep, then --resume.

mxscan runs as a process against a lab served from a thread of the test. The sweep
is paced (--connection-rate) over one lab host per domain, so it is still running
when the signal comes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labkit import world
from scanner.lab.background import BackgroundLab
from scanner.resume import prepare_resume, record_key, repair_torn_tail

ROOT = Path(__file__).resolve().parent.parent

HOSTS = 120
# New connections per second in the first run: 120 hosts take about 6 s.
FIRST_RUN_RATE = "20"


def paced_world() -> tuple[dict, list[str]]:
    records: dict = {}
    hosts = []
    domains = []
    for index in range(HOSTS):
        address = f"127.0.41.{index + 1}"
        name = f"mx{index}.resume.test"
        records[name] = {"A": [address]}
        domain = f"r{index:03}.resume.test"
        records[domain] = {"MX": [f"10 {name}."]}
        hosts.append((address, name, "esmtp"))
        domains.append(domain)
    # Domains that need no connection: NXDOMAIN, null MX, invalid input and a duplicate.
    records["null.resume.test"] = {"MX": ["0 ."]}
    domains += ["missing.resume.test", "null.resume.test", "bad_name.resume.test", "R000.Resume.Test."]
    return world(records, hosts, dns_address="127.0.41.253"), domains


def expected_keys(domains: list[str]) -> set[str]:
    return {"missing.resume.test", "null.resume.test", "bad_name.resume.test"} | {d for d in domains if d.startswith("r")}


def write_config(tmp_path: Path, lab: BackgroundLab, domains: list[str]) -> Path:
    domains_file = tmp_path / "domains.txt"
    domains_file.write_text("\n".join(domains) + "\n")
    config = {
        "domains_file": str(domains_file),
        "resolvers": [lab.lab.resolver],
        "smtp": {"port": lab.lab.smtp_port, "ehlo_name": "scanner.test"},
        "policy": {"allow_private": True},
        "timeouts": {"connect": 2.0, "banner": 2.0, "reply": 2.0, "quit": 1.0, "host": 5.0},
        "dns": {"timeout": 1.0, "retries": 1},
        "tls": {"starttls": False},
        "concurrency": 50,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_mxscan(config: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scanner", "scan", str(config), "-o", str(output), "--progress", "none", *extra],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_lines(output: Path, count: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if output.exists() and output.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, process.communicate()[1].decode()
        time.sleep(0.05)
    raise AssertionError(f"{output} did not reach {count} lines in {timeout} s")


def keys_of(output: Path) -> list[str]:
    return [record_key(line) for line in output.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def lab_and_domains():
    data, domains = paced_world()
    with BackgroundLab(data) as lab:
        yield lab, domains


def test_sigterm_then_resume(tmp_path, lab_and_domains, record_schema):
    lab, domains = lab_and_domains
    config = write_config(tmp_path, lab, domains)
    output = tmp_path / "out.jsonl"

    first = start_mxscan(config, output, "--connection-rate", FIRST_RUN_RATE, "--stop-grace", "5")
    wait_for_lines(output, 20, first)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 1, stderr.decode()
    assert b"stopped by SIGTERM" in stderr

    data = output.read_bytes()
    assert data.endswith(b"\n")
    stopped_keys = keys_of(output)
    assert None not in stopped_keys
    assert 20 <= len(stopped_keys) < len(expected_keys(domains))

    second = start_mxscan(config, output, "--resume")
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 0, stderr.decode()
    assert f"already in the output (--resume): {len(stopped_keys)}".encode() in stderr

    final_keys = keys_of(output)
    assert len(final_keys) == len(set(final_keys))
    assert set(final_keys) == expected_keys(domains)
    assert final_keys[: len(stopped_keys)] == stopped_keys
    for line in output.read_bytes().splitlines():
        record_schema.validate(json.loads(line))


def test_kill_9_then_resume(tmp_path, lab_and_domains, record_schema):
    lab, domains = lab_and_domains
    config = write_config(tmp_path, lab, domains)
    output = tmp_path / "out.jsonl"

    first = start_mxscan(config, output, "--connection-rate", FIRST_RUN_RATE)
    wait_for_lines(output, 10, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    # A power loss can leave half a line; a kill -9 between two writes of a long line
    # too. Make sure the tail is torn, whatever the kill left.
    repair_torn_tail(output)
    killed_keys = keys_of(output)
    with output.open("ab") as handle:
        handle.write(b'{"schema":"mxscan/1","domain":"r119.res')

    second = start_mxscan(config, output, "--resume")
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 0, stderr.decode()
    assert b"torn last line" in stderr

    final_keys = keys_of(output)
    assert None not in final_keys
    assert len(final_keys) == len(set(final_keys))
    assert set(final_keys) == expected_keys(domains)
    assert final_keys[: len(killed_keys)] == killed_keys
    for line in output.read_bytes().splitlines():
        record_schema.validate(json.loads(line))


def test_resume_without_output_is_usage_error(tmp_path, lab_and_domains):
    lab, domains = lab_and_domains
    config = write_config(tmp_path, lab, domains[:2])
    result = subprocess.run(
        [sys.executable, "-m", "scanner", "scan", str(config), "--resume"],
        cwd=ROOT, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert result.returncode == 2
    assert b"--resume needs -o/--output" in result.stderr


def test_repair_cuts_to_last_newline(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"domain":"a.test","query_name":"a.test"}\n{"domain":"b.te')
    assert repair_torn_tail(path) == len(b'{"domain":"b.te')
    assert path.read_bytes() == b'{"domain":"a.test","query_name":"a.test"}\n'
    assert repair_torn_tail(path) == 0


def test_repair_of_one_torn_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"domain":"a.te')
    assert repair_torn_tail(path) == len(b'{"domain":"a.te')
    assert path.read_bytes() == b""


def test_repair_finds_newline_beyond_a_chunk(tmp_path):
    path = tmp_path / "out.jsonl"
    first = b'{"domain":"a.test","query_name":"a.test"}\n'
    path.write_bytes(first + b"x" * 200_000)
    assert repair_torn_tail(path) == 200_000
    assert path.read_bytes() == first


def test_resume_keys_name_or_given_text(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(
        b'{"domain":"A.test.","query_name":"a.test"}\n'
        b'{"domain":"bad_name.test","query_name":null}\n'
        b'not json\n'
    )
    state = prepare_resume(path)
    assert state.lines == 2
    assert state.unreadable_lines == 1
    assert state.torn_bytes == 0
    assert len(state.done) == 2


def test_resume_of_missing_file_starts_empty(tmp_path):
    state = prepare_resume(tmp_path / "absent.jsonl")
    assert len(state.done) == 0
    assert state.lines == 0
