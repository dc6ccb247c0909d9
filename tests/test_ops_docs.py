"""The operations docs: every reason, status, change type and metric is documented, and the jq cookbook runs."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.ops.diff import ChangeType
from scanner.ops.summary import SweepSummary, render_prometheus
from scanner.results import Reason, Status
from test_ops_lab import lab_sweeps

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_reason_documented():
    text = (DOCS / "reasons.md").read_text()
    missing = [reason.value for reason in Reason if f"| `{reason.value}` |" not in text]
    assert missing == []


def test_every_status_and_change_documented():
    text = (DOCS / "schema.md").read_text()
    assert [status.value for status in Status if f"| `{status.value}` |" not in text] == []
    assert [change.value for change in ChangeType if f"| `{change.value}` |" not in text] == []


def test_every_metric_documented():
    text = (DOCS / "schema.md").read_text()
    summary = SweepSummary("x")
    summary.started = summary.finished = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    metrics = re.findall(r"^# TYPE (\S+) ", render_prometheus(summary), re.MULTILINE)
    assert "mxscan_sweep_duration_seconds" in metrics
    assert [name for name in metrics if f"| `{name}` |" not in text] == []


def cookbook_blocks() -> list[tuple[str, str]]:
    """Return (heading, shell code) for each ```sh block of the README's jq recipes."""
    blocks, heading = [], ""
    readme = (DOCS.parent / "README.md").read_text()
    text = readme.split("\n### jq recipes\n", 1)[1].split("\n## ", 1)[0]
    for match in re.finditer(r"^#### ([^\n]+)$|^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if match.group(1):
            heading = match.group(1)
        else:
            blocks.append((heading, match.group(2)))
    return blocks


# Text each section's output must contain, on the two lab sweeps.
EXPECTED = {
    "Domains by status": ["reachable", "unreachable"],
    "Unreachable domains by reason": ["connection_refused", "became-unreachable.test"],
    "Domains without STARTTLS": ["banner.test", "tls-lost.test"],
    "TLS versions": ["TLSv1.3", "TLSv1.2"],
    "Certificates expiring": ["cert-expiring.test\tmx.cert-expiring.test"],
    "By tag": ["customer-c"],
    "MX providers": ["stable.test"],
    "What changed since last night": ["became_unreachable\tbecame-unreachable.test", "became-unreachable.test\tconnection_refused"],
}


def test_cookbook_sections_known():
    headings = {heading for heading, _code in cookbook_blocks()}
    assert headings == set(EXPECTED)


@pytest.mark.parametrize("heading", sorted(EXPECTED))
def test_cookbook_runs(heading, tmp_path_factory, tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (apt-get install jq)")
    old_path, new_path, _old, _new = lab_sweeps(tmp_path_factory)
    shutil.copy(new_path, tmp_path / "results.jsonl")
    shutil.copy(old_path, tmp_path / "previous.jsonl")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    output = ""
    for block_heading, code in cookbook_blocks():
        if block_heading != heading:
            continue
        done = subprocess.run(["bash", "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (code, done.stderr)
        assert "error" not in done.stderr, (code, done.stderr)
        output += done.stdout
    for expected in EXPECTED[heading]:
        assert expected in output, (heading, output)
