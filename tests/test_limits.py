"""The open-files limit: raised at start, and the connection bound capped below it."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from labkit import world
from scanner.lab.background import BackgroundLab
from scanner.limits import RESERVED_DESCRIPTORS, FileLimit, cap_connections

ROOT = Path(__file__).resolve().parent.parent


def test_cap_keeps_a_bound_that_fits(caplog):
    limit = FileLimit(soft=20_000, hard=20_000)
    with caplog.at_level(logging.WARNING):
        assert cap_connections(500, limit) == 500
    assert not caplog.records


def test_cap_lowers_bound_with_warning(caplog):
    limit = FileLimit(soft=1024, hard=1024)
    with caplog.at_level(logging.WARNING):
        assert cap_connections(5000, limit) == 1024 - RESERVED_DESCRIPTORS
    assert len(caplog.records) == 1
    assert "open-files limit of 1024" in caplog.records[0].getMessage()


def test_cap_never_below_one():
    assert cap_connections(100, FileLimit(soft=10, hard=10)) == 1


def test_soft_limit_raised_to_hard():
    # In a child process, so this test process keeps its own limits.
    code = textwrap.dedent(
        """
        import resource
        from scanner.limits import raise_open_files_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_open_files_limit()
        print(limit.soft, limit.hard, *resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    soft, hard, now_soft, now_hard = map(int, result.stdout.split())
    _, expected_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == now_hard == expected_hard
    assert soft == now_soft == expected_hard


def _lower_nofile(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_sweep_caps_connections_under_low_limit(tmp_path):
    hosts = [("127.0.43.1", "mx.limits.test", "esmtp")]
    records = {"mx.limits.test": {"A": ["127.0.43.1"]}, "a.limits.test": {"MX": ["10 mx.limits.test."]}}
    with BackgroundLab(world(records, hosts, dns_address="127.0.43.253")) as lab:
        config = {
            "domains": ["a.limits.test"],
            "resolvers": [lab.lab.resolver],
            "smtp": {"port": lab.lab.smtp_port, "ehlo_name": "scanner.test"},
            "policy": {"allow_private": True},
            "tls": {"starttls": False},
        }
        config_path = tmp_path / "sweep.yaml"
        config_path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [sys.executable, "-m", "scanner", "scan", str(config_path), "--max-connections", "5000", "--progress", "none"],
            cwd=ROOT, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
            preexec_fn=_lower_nofile(600),
        )
    assert result.returncode == 0, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "5000 connections at once would not fit under the open-files limit of 600" in stderr
    assert f"using {600 - RESERVED_DESCRIPTORS}" in stderr
    assert b'"status":"reachable"' in result.stdout
