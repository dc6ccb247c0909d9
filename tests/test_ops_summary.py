"""mxscan summary: the table, the JSON form, and Prometheus metrics read back by prometheus_client."""

from __future__ import annotations

import collections
import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scanner.cli import main
from scanner.ops.summary import expiry_bucket, provider_of, summarize
from scanner.results import Reason, Status
from test_ops_lab import lab_sweeps


@pytest.fixture
def sweeps(tmp_path_factory):
    return lab_sweeps(tmp_path_factory)


def run_summary(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["summary", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def file_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def metric_samples(text: str) -> dict[str, list]:
    """Parse exposition text with prometheus_client and return the samples by metric name."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_summary_table(sweeps, capsys):
    _old_path, new_path, _old, _new = sweeps
    status, out, _err = run_summary(capsys, new_path)
    assert status == 0
    assert f"mxscan summary of {new_path}: 16 domains" in out
    assert "\nStatus " in out
    assert "\nReason " in out
    assert "connection_refused" in out
    assert "stable.test" in out  # the top provider
    assert "TLSv1.3" in out
    assert "Domains with a certificate expiring within 14 days: 1" in out
    assert "cert-expiring.test" in out


def test_summary_json_counts(sweeps, capsys):
    _old_path, new_path, _old, _new = sweeps
    status, out, _err = run_summary(capsys, new_path, "--format", "json")
    assert status == 0
    summary = json.loads(out)
    records = file_records(new_path)

    assert summary["domains"] == len(records)
    assert summary["statuses"] == {status.value: sum(r["status"] == status.value for r in records) for status in Status}
    assert set(summary["reasons"]) == {reason.value for reason in Reason}
    assert summary["reasons"]["connection_refused"] == sum(r["reason"] == "connection_refused" for r in records)
    # stable.test's exchange also serves added.test (new sweep).
    assert summary["providers"][0] == {"provider": "stable.test", "domains": 2}
    assert summary["tls"]["TLSv1.3"] == 3
    assert summary["tls"]["TLSv1.2"] == 1
    # tls-gained.test lists STARTTLS and replies 454 to it: "failed" when the probe
    # tries STARTTLS, "offered, not tested" when it does not.
    assert summary["tls"].get("STARTTLS failed", 0) + summary["tls"].get("STARTTLS offered, not tested", 0) == 1
    assert summary["certificates"]["expiring_domains"] == 1
    assert summary["certificates"]["soonest"][0]["domain"] == "cert-expiring.test"
    assert summary["certificates"]["by_expiry"]["8-14 days"] == 1
    assert summary["sweep"]["duration_seconds"] > 0
    assert summary["sweep"]["started_at"].endswith("Z")


def test_summary_prometheus_parses(sweeps, capsys):
    _old_path, new_path, _old, _new = sweeps
    status, out, _err = run_summary(capsys, new_path, "--format", "prometheus")
    assert status == 0
    samples = metric_samples(out)
    records = file_records(new_path)

    by_status = {sample.labels["status"]: sample.value for sample in samples["mxscan_domains_by_status"]}
    assert set(by_status) == {status.value for status in Status}
    assert by_status["reachable"] == sum(r["status"] == "reachable" for r in records)
    by_reason = {sample.labels["reason"]: sample.value for sample in samples["mxscan_domains_by_reason"]}
    assert set(by_reason) == {reason.value for reason in Reason}
    assert samples["mxscan_domains"][0].value == len(records)

    [duration] = samples["mxscan_sweep_duration_seconds"]
    [start] = samples["mxscan_sweep_start_timestamp_seconds"]
    [end] = samples["mxscan_sweep_end_timestamp_seconds"]
    assert 0 < duration.value < 60
    assert end.value - start.value == pytest.approx(duration.value, abs=0.002)
    assert start.value > 1.7e9  # a Unix time in seconds, not milliseconds

    [expiring] = samples["mxscan_domains_certificate_expiring"]
    assert expiring.labels == {"within_days": "14"}
    assert expiring.value == 1
    for family in text_string_to_metric_families(out):
        assert family.type == "gauge", family.name


def test_summary_prometheus_labels_escaped(sweeps, capsys):
    _old_path, new_path, _old, _new = sweeps
    awkward = 'night "A"\\B\nC'
    status, out, _err = run_summary(capsys, new_path, "--format", "prometheus", "--metric-label", "sweep=" + awkward, "--metric-label", "site=eu")
    assert status == 0
    for family in text_string_to_metric_families(out):
        for sample in family.samples:
            assert sample.labels["sweep"] == awkward
            assert sample.labels["site"] == "eu"


@pytest.mark.parametrize("label", ["1abc=x", "a-b=x", "noequals", "__name__=x", "=x"])
def test_summary_bad_metric_label(sweeps, capsys, label):
    _old_path, new_path, _old, _new = sweeps
    with pytest.raises(SystemExit) as exited:
        main(["summary", str(new_path), "--format", "prometheus", "--metric-label", label])
    assert exited.value.code == 2
    assert "label" in capsys.readouterr().err


def test_summary_writes_file_whole(sweeps, capsys, tmp_path):
    _old_path, new_path, _old, _new = sweeps
    target = tmp_path / "mxscan.prom"
    target.write_text("stale\n")
    status, out, _err = run_summary(capsys, new_path, "--format", "prometheus", "-o", target)
    assert status == 0
    assert out == ""
    assert "mxscan_domains_by_status" in target.read_text()
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["mxscan.prom"]


def test_summary_unwritable_output(sweeps, capsys, tmp_path):
    _old_path, new_path, _old, _new = sweeps
    status, _out, err = run_summary(capsys, new_path, "-o", tmp_path / "missing-folder" / "x.prom")
    assert status == 2
    assert "missing-folder/x.prom: cannot write" in err


def test_summary_bad_line_exits_2(sweeps, capsys, tmp_path):
    _old_path, new_path, _old, _new = sweeps
    lines = new_path.read_text().splitlines()
    bad = tmp_path / "cut.jsonl"
    bad.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2] + "\n")
    status, out, err = run_summary(capsys, bad)
    assert status == 2
    assert out == ""
    assert f"mxscan: error: {bad}:4: invalid JSON" in err


def test_summary_demo_sweep_style_records(tmp_path):
    # Records without any tls key (written before STARTTLS was probed) still count.
    record = {
        "schema": "mxscan/1", "domain": "a.example", "query_name": "a.example", "tags": ["x"], "status": "reachable",
        "reason": None, "failure": None, "mx_source": "mx", "mx_left_out": 0, "started_at": "2026-01-01T00:00:00.000Z", "elapsed_ms": 1500.0,
        "exchanges": [{"name": "mx.a.example", "preference": 10, "failure": None, "addresses_left_out": 0, "addresses": [
            {"address": "192.0.2.1", "family": "ipv4", "skipped": None, "probe": {"greeting": "ehlo", "keywords": {"STARTTLS": ""}, "banner": None}},
        ]}],
    }
    path = tmp_path / "old-style.jsonl"
    path.write_text(json.dumps(record) + "\n")
    summary = summarize(path)
    assert summary.tls == collections.Counter({"STARTTLS offered, not tested": 1})
    assert summary.duration_seconds == 1.5
    assert summary.tags == collections.Counter({"x": 1})


def test_provider_of():
    assert provider_of("aspmx.l.google.com") == "google.com"
    assert provider_of("MX1.Example.NET.") == "example.net"
    assert provider_of("mx.example.co.uk", labels=3) == "example.co.uk"
    assert provider_of("192.0.2.7") == "192.0.2.7"
    assert provider_of("localhost") == "localhost"


@pytest.mark.parametrize("days,bucket", [(-3, "expired"), (-1, "expired"), (0, "0-7 days"), (7, "0-7 days"), (8, "8-14 days"), (30, "15-30 days"), (90, "31-90 days"), (91, "over 90 days")])
def test_expiry_bucket(days, bucket):
    assert expiry_bucket(days) == bucket
