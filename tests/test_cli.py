"""The command line as a user runs it: demo, scan, exit codes, messages, closed pipes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def mxscan(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scanner", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def demo_domain_count() -> int:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    names = [item if isinstance(item, str) else item["domain"] for item in config["domains"]]
    distinct = set()
    for name in names:
        distinct.add(name.strip().rstrip(".").lower() if name.isascii() else name)
    return len(distinct)


def test_demo_prints_one_valid_line_per_domain(record_schema):
    result = mxscan("demo")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode("ascii").splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record_schema.validate(record)
    assert len(records) == demo_domain_count()
    assert len({record["query_name"] or record["domain"] for record in records}) == len(records)
    statuses = {record["status"] for record in records}
    assert {"reachable", "unreachable", "null_mx", "no_mail_domain", "dns_error", "invalid_input"} <= statuses
    stderr = result.stderr.decode()
    assert "domains in" in stderr
    assert "duplicate entries skipped: 1" in stderr


def test_demo_to_file(tmp_path):
    out = tmp_path / "demo.jsonl"
    result = mxscan("-q", "demo", "-o", str(out))
    assert result.returncode == 0
    assert result.stdout == b""
    assert result.stderr == b""
    assert len(out.read_text().splitlines()) == demo_domain_count()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scan.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("text,message", [
    ("domains: [a.test]\ntimeouts:\n  conect: 5\n", "unknown setting 'timeouts.conect': did you mean 'connect'?"),
    ("domains: [a.test]\nconcurency: 5\n", "did you mean 'concurrency'?"),
    ("domains: [a.test]\ntimeouts: {connect: soon}\n", "timeouts.connect: expected a number, got 'soon'"),
    ("domains: [a.test]\nconcurrency: 0\n", "concurrency: 0 is below the minimum 1"),
    ("domains: [a.test]\nresolvers: [dns.example]\n", "resolvers[0]: 'dns.example' is not an IP address"),
    ("domains: [a.test\n", "YAML syntax error at line 2, column 1"),
    ("domains: a.test\n", "'domains' must be a list"),
    ("domains_file: missing.txt\n", "missing.txt not found"),
    ("settings: 1\n", "no domains"),
    ("domains: [a.test]\ntimeouts: {connect: .nan}\n", "timeouts.connect: expected a finite number, got nan"),
    ("domains: [a.test]\nsmtp: {ehlo_name: sc\u00e4nner.test}\n", "smtp.ehlo_name: 'sc\u00e4nner.test' is not a valid host name"),
    ("domains: [a.test]\nsmtp: {ehlo_name: two words}\n", "is not a valid host name"),
    ("domains: [a.test]\nsmtp: {source_address: not-an-ip}\n", "smtp.source_address: 'not-an-ip' is not an IP address"),
    ("domains: [a.test]\nresolvers: ['[::1]x']\n", "write an IPv6 resolver with a port as [::1]:53"),
    ("domains: [a.test]\ntimeouts: {connect: 1}\ntimeouts: {banner: 1}\n", "key 'timeouts' appears twice"),
    ("domains_file: .\n", "is a folder"),
])
def test_bad_configuration_exits_2(tmp_path, text, message):
    result = mxscan("scan", str(write(tmp_path, text)))
    assert result.returncode == 2
    assert result.stdout == b""
    assert message in result.stderr.decode()


def test_missing_config_file(tmp_path):
    result = mxscan("scan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "configuration file not found" in result.stderr.decode()


def test_bad_command_line_value_exits_2(tmp_path):
    path = write(tmp_path, "domains: [a.test]\n")
    result = mxscan("scan", str(path), "--resolver", "not-an-ip")
    assert result.returncode == 2
    assert "--resolver" in result.stderr.decode()
    result = mxscan("scan", str(path), "--port", "70000")
    assert result.returncode == 2
    assert "--port: 70000 is above the maximum 65535" in result.stderr.decode()
    result = mxscan("scan", str(path), "--dns-timeout", "inf")
    assert result.returncode == 2
    assert "--dns-timeout: expected a finite number" in result.stderr.decode()


def test_no_command_prints_help():
    result = mxscan()
    assert result.returncode == 2
    assert b"scan" in result.stderr


def test_closed_pipe_ends_quietly():
    command = f"{sys.executable} -m scanner demo | head -n 1"
    result = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1
    assert b"Traceback" not in result.stderr
    assert b"BrokenPipe" not in result.stderr


def test_domains_file_and_invalid_lines(tmp_path, record_schema):
    (tmp_path / "list.txt").write_text("# customers\nbad..name\n\n   # blank\n192.0.2.1\nok.test  # trailing comment\n")
    path = write(tmp_path, """\
        domains_file: list.txt
        resolvers: ["127.0.0.1:9"]
        dns: {timeout: 0.2, retries: 0}
        """)
    result = mxscan("scan", str(path))
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    for record in records:
        record_schema.validate(record)
    assert sorted((r["domain"], r["status"]) for r in records) == [
        ("192.0.2.1", "invalid_input"),
        ("bad..name", "invalid_input"),
        ("ok.test", "dns_error"),
    ]
    stderr = result.stderr.decode()
    assert "list.txt:2" in stderr
    assert "list.txt:5" in stderr


def test_python_dash_m_and_console_script_agree():
    assert mxscan("--version").stdout.decode().startswith("mxscan ")
    script = Path(sys.executable).with_name("mxscan")
    if script.exists():
        result = subprocess.run([str(script), "--version"], capture_output=True, timeout=30)
        assert result.stdout == mxscan("--version").stdout


def test_output_is_ascii_json_lines():
    result = mxscan("demo")
    for line in result.stdout.splitlines():
        assert line.isascii()
        assert b"\x1b" not in line
        json.loads(line)


def test_example_config_matches_defaults():
    from scanner.config import load_config
    from scanner.config_doc import render_defaults

    path = ROOT / "configs" / "example.yaml"
    assert path.read_text() == render_defaults(), "regenerate with: mxscan defaults > configs/example.yaml"
    config = load_config(path)
    assert config.settings.smtp.port == 25
    result = mxscan("defaults")
    assert result.returncode == 0
    assert result.stdout.decode() == render_defaults()


def test_output_over_input_rejected(tmp_path):
    (tmp_path / "list.txt").write_text("a.test\n")
    path = write(tmp_path, "domains_file: list.txt\nresolvers: ['127.0.0.1:9']\n")
    for target in ("list.txt", "scan.yaml"):
        result = mxscan("scan", str(path), "-o", str(tmp_path / target))
        assert result.returncode == 2
        assert "would destroy it" in result.stderr.decode()
    assert (tmp_path / "list.txt").read_text() == "a.test\n"


def test_lab_command_serves_demo_world(record_schema):
    lab = subprocess.Popen([sys.executable, "-m", "scanner", "lab", "--duration", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = lab.stdout.readline().decode()
        assert first.startswith("lab DNS: 127.0.53.1:")
        words = first.split()
        resolver, port = words[2], words[5]
        result = mxscan("check", "good.test", "--json", "--resolver", resolver, "--port", port, "--allow-private", "--ehlo-name", "scanner.test")
        assert result.returncode == 0, result.stderr.decode()
        record = json.loads(result.stdout)
        record_schema.validate(record)
        assert record["status"] == "reachable"
    finally:
        lab.terminate()
        assert lab.wait(timeout=10) == 0


def test_write_error_stops_sweep(tmp_path):
    path = write(tmp_path, "domains: [a.test, b.test, c.test]\nresolvers: ['127.0.0.1:9']\ndns: {timeout: 0.2, retries: 0}\n")
    result = mxscan("scan", str(path), "-o", "/dev/full", timeout=30)
    assert result.returncode == 1
    assert "cannot write the results: No space left on device" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_yaml_alias_bomb_is_cheap(tmp_path):
    # Nine lists of nine, nested nine deep through aliases: 9**9 leaves in 600 bytes.
    nested = 'domains: [good.test, &x0 ["x.test", "x.test", "x.test", "x.test", "x.test", "x.test", "x.test", "x.test", "x.test"]'
    for level in range(1, 9):
        nested += f", &x{level} [" + ", ".join([f"*x{level - 1}"] * 9) + "]"
    path = write(tmp_path, nested + "]\nresolvers: ['127.0.0.1:9']\ndns: {timeout: 0.2, retries: 0}\n")
    result = mxscan("-q", "scan", str(path), timeout=30)
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 10
    assert all(len(record["domain"]) <= 200 for record in records)


def test_overlong_line_and_control_characters(tmp_path, record_schema):
    (tmp_path / "list.txt").write_bytes(b"a" * 100_000 + b"\nok.test\n\x1b[2Jclear.test\n")
    path = write(tmp_path, "domains_file: list.txt\nresolvers: ['127.0.0.1:9']\ndns: {timeout: 0.2, retries: 0}\n")
    result = mxscan("-q", "scan", str(path))
    records = {record["status"] + ":" + str(record["reason"]): record for record in map(json.loads, result.stdout.splitlines())}
    assert len(records) == 3
    assert records["invalid_input:name_too_long"]["domain"] == "a" * 200
    assert records["invalid_input:invalid_label"]["domain"] == "\\x1b[2Jclear.test"
    for record in records.values():
        record_schema.validate(record)
