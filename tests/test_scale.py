"""Sweeps at scale: a 10,000-domain lab sweep, the DNS stage's slots and channels, the
key set, and the output encoding."""

from __future__ import annotations

import asyncio
import time

import hypothesis
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


# The DNS stage at scale: the query slots, the channel pool and the digest set.


def test_slots_hand_over_in_order(run):
    from scanner.dns.resolver import _Slots

    async def scenario():
        slots = _Slots(2)
        order = []

        async def user(index):
            async with slots:
                order.append(index)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(user(index) for index in range(20)))
        return order, slots._free

    order, free = run(scenario())
    assert order == list(range(20))
    assert free == 2


def test_slots_cancelled_waiter_passes_slot(run):
    from scanner.dns.resolver import _Slots

    async def scenario():
        slots = _Slots(1)
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        other = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        # The slot goes to the first waiter, which is cancelled before it runs.
        slots.release()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.wait_for(other, 1.0)
        slots.release()
        return slots._free, len(slots._waiters)

    assert run(scenario()) == (1, 0)


def test_resolver_spreads_queries_over_channels(run):
    from scanner.dns import resolver as resolver_module

    records = {f"h{index}.many.test": {"A": [f"127.0.46.{index % 250 + 1}"]} for index in range(1200)}

    async def scenario():
        async with Lab.from_dict(world(records, [], dns_address="127.0.46.253")) as lab:
            resolver = resolver_module.Resolver((lab.resolver,), timeout=5.0, retries=1, concurrency=600)
            try:
                answers = await asyncio.gather(*(resolver.query(name, "A") for name in records))
                return answers, len(resolver._channels), resolver.channels_opened
            finally:
                await resolver.close()

    answers, channels, opened = run(scenario())
    assert all(len(answer) == 1 for answer in answers)
    assert channels == -(-600 // resolver_module.CHANNEL_QUERIES_IN_FLIGHT)
    assert opened == channels


def test_resolver_retires_channels_after_budget(run, monkeypatch):
    from scanner.dns import resolver as resolver_module

    monkeypatch.setattr(resolver_module, "CHANNEL_QUERY_BUDGET", 50)
    records = {f"r{index}.retire.test": {"A": ["127.0.47.1"]} for index in range(400)}

    async def scenario():
        async with Lab.from_dict(world(records, [], dns_address="127.0.47.253")) as lab:
            resolver = resolver_module.Resolver((lab.resolver,), timeout=5.0, retries=1, concurrency=100)
            try:
                answers = await asyncio.gather(*(resolver.query(name, "A") for name in records))
                return answers, resolver.channels_opened, len(resolver._retired)
            finally:
                await resolver.close()

    answers, opened, still_retiring = run(scenario())
    assert all(len(answer) == 1 for answer in answers)
    # 400 queries at 50 per channel: every channel but the current one was retired.
    assert opened >= 400 // 50
    assert still_retiring == 0


def test_digest_set_members():
    from scanner.keyset import DigestSet

    digests = DigestSet()
    values = [index * 0x9E3779B97F4A7C15 % (1 << 64) for index in range(1, 10_001)]
    for value in values:
        assert digests.add(value)
    assert len(digests) == len(values)
    for value in values:
        assert value in digests
        assert not digests.add(value)
    assert (1 << 63) + 12345 not in digests
    # Zero is a valid digest although it marks empty slots inside the table.
    assert digests.add(0)
    assert 0 in digests


# Output lines: orjson on the fast path, json.dumps where orjson would differ.


def _reference_line(result) -> bytes:
    import json

    from scanner.results import to_json_dict

    return (json.dumps(to_json_dict(result), ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def test_encode_line_matches_json_dumps():
    from scanner.output import encode_line
    from scanner.results import DomainResult, Failure, Phase, Reason, Status

    cases = [
        DomainResult("a.test", "a.test", ("t1",), Status.REACHABLE, "2026-12-04T20:00:00.000Z", 12.5),
        # Server text with control characters, quotes and an escape sequence.
        DomainResult("b.test", "b.test", (), Status.UNREACHABLE, "2026-12-04T20:00:00.000Z", 0.1,
                     failure=Failure(Phase.BANNER, Reason.BANNER_REJECTED, 'no "service"\x1b[31m\r\n\t\x7f')),
        # Non-ASCII text must come out as \\u escapes, never as UTF-8.
        DomainResult("Bücher.test", "xn--bcher-kva.test", ("é",), Status.INVALID_INPUT, "2026-12-04T20:00:00.000Z", 0.0,
                     failure=Failure(Phase.INPUT, Reason.INVALID_LABEL, "bad \u2028 label \U0001F600")),
        # An integer beyond 64 bits, which orjson rejects.
        DomainResult("c.test", "c.test", (), Status.REACHABLE, "2026-12-04T20:00:00.000Z", 1.0, mx_left_out=1 << 70),
    ]
    for result in cases:
        line = encode_line(result)
        assert line == _reference_line(result), result.domain
        assert line.isascii()
        assert line.count(b"\n") == 1


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(text=hypothesis.strategies.text(), number=hypothesis.strategies.integers(min_value=0))
def test_encode_line_any_text(text, number):
    from scanner.output import encode_line
    from scanner.results import DomainResult, Failure, Phase, Reason, Status

    result = DomainResult(text, None, (text,), Status.INVALID_INPUT, "2026-12-04T20:00:00.000Z", 0.0,
                          failure=Failure(Phase.INPUT, Reason.INVALID_LABEL, text), mx_left_out=number)
    assert encode_line(result) == _reference_line(result)


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    # The benchmark command with a 1,000-domain lab: NSD, responders and the three clients.
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("nsd") is None and not Path("/usr/sbin/nsd").exists():
        if os.environ.get("CI"):
            pytest.fail("nsd is not installed; .ci/run installs it")
        pytest.skip("nsd is not installed (apt-get install nsd)")
    root = Path(__file__).resolve().parent.parent
    record = tmp_path / "smoke.md"
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "run.py"), "--smoke", "--record", str(record)],
        cwd=root, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    text = record.read_text()
    for client in ("mxscan, concurrency 200", "floor, concurrency 200", "sysadmin, 64 threads"):
        assert f"| {client} | " in text, text


# Progress on stderr: lines when it is not a terminal, a bar on a terminal, none with -q.


def _progress_run(tmp_path, *options: str, tty: bool = False) -> tuple[int, bytes]:
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from scanner.lab.background import BackgroundLab

    hosts = [(f"127.0.49.{index + 1}", f"mx{index}.progress.test", "esmtp") for index in range(30)]
    records = {name: {"A": [address]} for address, name, _ in hosts}
    domains = []
    for index, (_, name, _) in enumerate(hosts):
        records[f"p{index}.progress.test"] = {"MX": [f"10 {name}."]}
        domains.append(f"p{index}.progress.test")
    root = Path(__file__).resolve().parent.parent
    with BackgroundLab(world(records, hosts, dns_address="127.0.49.253")) as lab:
        config = {
            "domains": domains,
            "resolvers": [lab.lab.resolver],
            "smtp": {"port": lab.lab.smtp_port, "ehlo_name": "scanner.test"},
            "policy": {"allow_private": True},
            "tls": {"starttls": False},
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(config))
        # 30 connections at 15 per second: about 2 s, long enough for a few redraws.
        command = [sys.executable, "-m", "scanner", "scan", str(path), "-o", str(tmp_path / "out.jsonl"), "--connection-rate", "15", *options]
        if not tty:
            result = subprocess.run(command, cwd=root, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            return result.returncode, result.stderr
        leader, follower = pty.openpty()
        process = subprocess.Popen(command, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        os.close(leader)
        return process.wait(timeout=60), output


def test_progress_lines_when_not_a_terminal(tmp_path):
    code, stderr = _progress_run(tmp_path, "--progress-interval", "0.3")
    assert code == 0, stderr.decode()
    lines = [line for line in stderr.decode().splitlines() if line.startswith("mxscan: progress: ")]
    assert len(lines) >= 2, stderr.decode()
    assert "/~30 (" in lines[-1]
    assert "/s" in lines[-1]
    assert "\r" not in stderr.decode()


def test_progress_bar_on_a_terminal(tmp_path):
    code, output = _progress_run(tmp_path, tty=True)
    assert code == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\r[" in text
    assert "ETA" in text or "elapsed" in text
    assert "mxscan: 30 domains in" in text


def test_quiet_prints_nothing(tmp_path):
    code, stderr = _progress_run(tmp_path, "-q", "--progress-interval", "0.3")
    assert code == 0
    assert stderr == b""


def test_digest_set_sized_up_front():
    from scanner.keyset import DigestSet

    digests = DigestSet(expected=100_000)
    slots = len(digests._table)
    assert slots >= 200_000
    for value in range(1, 100_001):
        digests.add(value * 0x9E3779B97F4A7C15 % (1 << 64))
    # No growth: the table allocated at the start has room for all of them.
    assert len(digests._table) == slots
    assert len(digests) == 100_000
