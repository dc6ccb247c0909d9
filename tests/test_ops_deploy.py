"""deploy/mxscan-nightly.sh over two nights against the lab: sweep, diff, metrics, report, alert."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families

from labkit import FAST_TIMEOUTS
from scanner.lab.world import Lab
from test_ops_lab import NEW_DOMAINS, NEW_WORLD, OLD_DOMAINS, OLD_WORLD

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "mxscan-nightly.sh"


class LabThread:
    """A lab world served by an event loop in a background thread, for subprocess sweeps."""

    def __init__(self, world: dict) -> None:
        self.lab = Lab.from_dict(world)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Lab:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.lab.start(), self.loop).result(timeout=10)
        return self.lab

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.lab.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def write_config(path: Path, lab: Lab, domains: list) -> None:
    path.write_text(yaml.safe_dump({
        "domains": domains,
        "resolvers": [lab.resolver],
        "smtp": {"port": lab.smtp_port, "ehlo_name": "scanner.test"},
        "policy": {"allow_private": True},
        "dns": {"timeout": 0.5, "retries": 0},
        "timeouts": dict(FAST_TIMEOUTS),
    }))


def run_night(tmp_path: Path, world: dict, domains: list) -> subprocess.CompletedProcess:
    with LabThread(world) as lab:
        write_config(tmp_path / "sweep.yaml", lab, domains)
        environment = json.loads(tmp_path.joinpath("env").read_text())
        return subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture
def nightly(tmp_path):
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed")
    wrapper = tmp_path / "mxscan"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m scanner "$@"\n')
    wrapper.chmod(0o755)
    alert = tmp_path / "alert.sh"
    alert.write_text(f'#!/bin/sh\necho "$1" >> "{tmp_path}/alerts.txt"\n')
    alert.chmod(0o755)
    environment = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "MXSCAN_CONFIG": str(tmp_path / "sweep.yaml"),
        "MXSCAN_DATA_DIR": str(tmp_path / "data"),
        "MXSCAN_METRICS_FILE": str(tmp_path / "mxscan.prom"),
        "MXSCAN_METRIC_LABELS": "sweep=lab site=test",
        "MXSCAN_FAIL_ON": "became_unreachable,starttls_lost",
        "MXSCAN_ALERT_COMMAND": str(alert),
        "MXSCAN_BIN": str(wrapper),
    }
    tmp_path.joinpath("env").write_text(json.dumps(environment))
    return tmp_path


def test_nightly_two_nights(nightly):
    data = nightly / "data"

    first = run_night(nightly, OLD_WORLD, OLD_DOMAINS)
    assert first.returncode == 0, first.stderr
    # cron mails any output, so a night without alert changes prints nothing.
    assert first.stdout == ""
    assert first.stderr == ""
    [sweep] = (data / "sweeps").iterdir()
    assert (data / "latest.jsonl").resolve() == sweep
    assert len(sweep.read_text().splitlines()) == len(OLD_DOMAINS)
    assert list((data / "changes").iterdir()) == []
    assert len(list((data / "reports").iterdir())) == 1

    families = {family.name: family for family in text_string_to_metric_families((nightly / "mxscan.prom").read_text())}
    [domains] = families["mxscan_domains"].samples
    assert domains.value == len(OLD_DOMAINS)
    assert domains.labels == {"sweep": "lab", "site": "test"}

    time.sleep(1.1)  # runs are named by the second
    second = run_night(nightly, NEW_WORLD, NEW_DOMAINS)
    assert second.returncode == 1, second.stderr
    printed = [json.loads(line) for line in second.stdout.splitlines()]
    assert sorted(change["change"] for change in printed) == ["became_unreachable", "starttls_lost"]

    sweeps = sorted(path.name for path in (data / "sweeps").iterdir())
    assert len(sweeps) == 2
    assert sweeps[0].endswith(".jsonl.gz")  # last night's, compressed after use
    assert gzip.decompress((data / "sweeps" / sweeps[0]).read_bytes()).count(b"\n") == len(OLD_DOMAINS)
    assert (data / "latest.jsonl").resolve().name == sweeps[1]

    [changes] = (data / "changes").iterdir()
    written = {json.loads(line)["change"] for line in changes.read_text().splitlines()}
    assert {"domain_added", "domain_removed", "mx_changed", "became_reachable"} <= written
    assert (nightly / "alerts.txt").read_text().strip() == str(changes)
    reports = sorted((data / "reports").iterdir())
    assert "Changes since" in reports[-1].read_text()


def test_nightly_failed_sweep_keeps_latest(nightly):
    data = nightly / "data"
    first = run_night(nightly, OLD_WORLD, OLD_DOMAINS)
    assert first.returncode == 0, first.stderr
    latest = (data / "latest.jsonl").resolve()

    (nightly / "sweep.yaml").write_text("domains: [a.test]\nno_such_setting: 1\n")
    environment = json.loads((nightly / "env").read_text())
    failed = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert "mxscan-nightly: sweep of" in failed.stderr
    assert (data / "latest.jsonl").resolve() == latest
    assert [path.name for path in (data / "sweeps").iterdir()] == [latest.name]


def test_nightly_requires_config(tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MXSCAN_")}
    done = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "set MXSCAN_CONFIG" in done.stderr
