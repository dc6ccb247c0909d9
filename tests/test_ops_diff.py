"""mxscan diff: every change type on two lab sweeps, exit statuses, and sorting on disk."""

from __future__ import annotations

import copy
import gzip
import json
import random

import pytest

from scanner.cli import main
from scanner.ops.diff import ChangeType, SweepDiff, compare_facts, parse_change_types
from scanner.ops.records import facts_from_record
from test_ops_lab import EXPECTED_CHANGES, SHA_A, SHA_B, lab_sweeps


@pytest.fixture
def sweeps(tmp_path_factory):
    return lab_sweeps(tmp_path_factory)


def run_diff(capsys, *args: str) -> tuple[int, list[dict], str]:
    status = main(["diff", *map(str, args)])
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_diff_lab_sweeps_every_type(sweeps, capsys):
    old_path, new_path, _old, _new = sweeps
    status, changes, err = run_diff(capsys, old_path, new_path)

    assert status == 1
    assert {(change["domain"], change["change"]) for change in changes} == EXPECTED_CHANGES
    assert {change["change"] for change in changes} == {change.value for change in ChangeType}
    assert [change["domain"] for change in changes] == sorted(change["domain"] for change in changes)
    assert "13 changes" in err


def test_diff_change_details(sweeps, capsys):
    old_path, new_path, _old, _new = sweeps
    _status, changes, _err = run_diff(capsys, old_path, new_path)
    found = {change["change"]: change for change in changes}

    unreachable = found["became_unreachable"]
    assert unreachable["old"] == {"status": "reachable", "reason": None}
    assert unreachable["new"] == {"status": "unreachable", "reason": "connection_refused"}
    assert found["became_reachable"]["new"] == {"status": "reachable", "reason": None}
    assert found["status_changed"]["old"]["reason"] == "banner_rejected"
    assert found["status_changed"]["new"]["reason"] == "connection_refused"

    assert found["mx_changed"]["old"] == {"mx_source": "mx", "mx": ["10 mx.stable.test"]}
    assert found["mx_changed"]["new"] == {"mx_source": "mx", "mx": ["10 mx.moved.test"]}
    assert found["addresses_changed"]["exchanges"] == [{"exchange": "mx.renumbered.test", "old": ["127.0.30.5"], "new": ["127.0.30.6"]}]

    [banner] = found["banner_changed"]["hosts"]
    assert banner["address"] == "127.0.30.7"
    assert banner["old"] == "220 mx.banner.test ESMTP Postfix (Debian)"
    assert banner["new"] == "220 mx.banner.test ESMTP Exim 4.96"

    # The 454 server is "failed" when the probe tries STARTTLS and "offered" when it does not.
    assert found["starttls_lost"]["old"] in ("offered", "failed")
    assert found["starttls_lost"]["new"] == "not_offered"
    assert found["starttls_gained"]["old"] == "not_offered"
    assert found["starttls_gained"]["new"] in ("offered", "failed")
    assert (found["tls_version_lowered"]["old"], found["tls_version_lowered"]["new"]) == ("TLSv1.3", "TLSv1.2")

    assert found["certificate_changed"]["old"] == [SHA_A]
    assert found["certificate_changed"]["new"] == [SHA_B]
    expiring = found["certificate_expiring"]
    assert expiring["within_days"] == 14
    assert expiring["hosts"][0]["certificate"]["days_to_expiry"] == 14

    assert found["domain_added"]["tags"] == ["customer-c"]
    assert found["domain_removed"]["tags"] == ["customer-b"]
    assert found["domain_removed"]["old"] == {"status": "reachable", "reason": None}


def test_diff_same_file_exits_0(sweeps, capsys):
    old_path, _new_path, _old, _new = sweeps
    status, changes, _err = run_diff(capsys, old_path, old_path)
    assert status == 0
    assert changes == []


def test_diff_fail_on_selects_types(sweeps, capsys):
    old_path, new_path, _old, _new = sweeps

    status, changes, _err = run_diff(capsys, old_path, new_path, "--fail-on", "starttls_lost")
    assert status == 1
    assert len(changes) == len(EXPECTED_CHANGES)  # every change is still written

    # Compare the new sweep with itself plus one domain: only domain_added.
    new_lines = new_path.read_text().splitlines()
    fewer = new_path.parent / "fewer.jsonl"
    fewer.write_text("\n".join(line for line in new_lines if '"domain":"added.test"' not in line.replace(" ", "")) + "\n")
    status, changes, _err = run_diff(capsys, fewer, new_path, "--fail-on", "became_unreachable,starttls_lost")
    assert [change["change"] for change in changes] == ["domain_added"]
    assert status == 0
    status, _changes, _err = run_diff(capsys, fewer, new_path, "--fail-on", "domain_added")
    assert status == 1


def test_diff_only_filters_output(sweeps, capsys):
    old_path, new_path, _old, _new = sweeps
    status, changes, _err = run_diff(capsys, old_path, new_path, "--only", "starttls_lost,starttls_gained", "--fail-on", "became_unreachable")
    assert sorted(change["change"] for change in changes) == ["starttls_gained", "starttls_lost"]
    # --fail-on counts only the written changes.
    assert status == 0


def test_diff_expiry_days_option(sweeps, capsys):
    old_path, new_path, _old, _new = sweeps
    _status, changes, _err = run_diff(capsys, old_path, new_path, "--only", "certificate_expiring", "--expiry-days", "13")
    assert changes == []
    _status, changes, _err = run_diff(capsys, old_path, new_path, "--only", "certificate_expiring", "--expiry-days", "30")
    # Within 30 days the old sweep already showed this certificate as expiring.
    assert changes == []


def test_diff_output_file(sweeps, capsys, tmp_path):
    old_path, new_path, _old, _new = sweeps
    output = tmp_path / "changes.jsonl"
    status, printed, _err = run_diff(capsys, old_path, new_path, "-o", output)
    assert status == 1
    assert printed == []
    assert len(output.read_text().splitlines()) == len(EXPECTED_CHANGES)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["changes.jsonl"]


def test_diff_reads_gzip(sweeps, capsys, tmp_path):
    old_path, new_path, _old, _new = sweeps
    packed = tmp_path / "old.jsonl.gz"
    packed.write_bytes(gzip.compress(old_path.read_bytes()))
    status, changes, _err = run_diff(capsys, packed, new_path)
    assert status == 1
    assert len(changes) == len(EXPECTED_CHANGES)


BAD_INPUTS = [
    # (file content, expected message part)
    (b'{"schema":"mxscan/1","domain":"a.test","status":"reachable"}\n{not json\n', ":2: invalid JSON"),
    (b'{"schema":"mxscan/1","domain":"a.test","status":"reachable"}\n\n[1, 2]\n', ":3: expected a JSON object, got list"),
    (b'{"domain":"a.test","status":"reachable"}\n', ":1: not an mxscan record"),
    (b'{"schema":"mxscan/1","status":"reachable"}\n', ":1: missing or invalid 'domain'"),
    (b'{"schema":"mxscan/1","domain":"a.test","status":"reachable"}\n\xff\xfe\n', ":2: not UTF-8 text"),
]


@pytest.mark.parametrize("content,message", BAD_INPUTS)
def test_diff_bad_input_exits_2(sweeps, capsys, tmp_path, content, message):
    _old_path, new_path, _old, _new = sweeps
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    status, changes, err = run_diff(capsys, bad, new_path)
    assert status == 2
    assert changes == []
    assert f"{bad}{message}" in err


def test_diff_missing_file_exits_2(sweeps, capsys, tmp_path):
    _old_path, new_path, _old, _new = sweeps
    status, _changes, err = run_diff(capsys, tmp_path / "absent.jsonl", new_path)
    assert status == 2
    assert "absent.jsonl: cannot open: No such file or directory" in err


def test_diff_unknown_type_is_usage_error(sweeps, capsys):
    old_path, new_path, _old, _new = sweeps
    with pytest.raises(SystemExit) as exited:
        main(["diff", str(old_path), str(new_path), "--fail-on", "mx_changed,cert_gone"])
    assert exited.value.code == 2
    assert "unknown change type cert_gone" in capsys.readouterr().err


def test_parse_change_types():
    assert parse_change_types("all") == set(ChangeType)
    assert parse_change_types(" mx_changed , starttls_lost ") == {ChangeType.MX_CHANGED, ChangeType.STARTTLS_LOST}
    with pytest.raises(ValueError, match="empty"):
        parse_change_types(" , ")


# Sorting on disk

def synthetic_record(domain: str, status: str = "reachable", mx: str = "mx.example.test", tags=()) -> dict:
    return {
        "schema": "mxscan/1", "domain": domain, "query_name": domain.lower().rstrip(".") if " " not in domain else None,
        "tags": list(tags), "status": status, "reason": None if status == "reachable" else "connection_refused",
        "failure": None, "mx_source": "mx", "mx_left_out": 0,
        "exchanges": [{"name": mx, "preference": 10, "addresses": [], "failure": None, "addresses_left_out": 0}],
        "started_at": "2026-01-01T00:00:00.000Z", "elapsed_ms": 1.0,
    }


def write_lines(path, records):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def key_of(name: str) -> str:
    return name if " " in name else name.lower()


def test_diff_sorts_in_many_runs(tmp_path):
    rng = random.Random(7)
    names = [f"d{index}.example" for index in range(2000)] + ["Bücher.example", "not a domain", '"quoted".example', "zz\\.example"]
    old = [synthetic_record(name) for name in names]
    rng.shuffle(old)
    # The same domain again, later in the file: this line wins.
    old.append(synthetic_record("d20.example", status="unreachable"))
    new = [synthetic_record(name, status="unreachable" if index % 7 == 0 else "reachable") for index, name in enumerate(names) if index >= 10]
    new.append(synthetic_record("new.example"))
    rng.shuffle(new)
    write_lines(tmp_path / "old.jsonl", old)
    write_lines(tmp_path / "new.jsonl", new)

    in_memory = list(SweepDiff(tmp_path / "old.jsonl", tmp_path / "new.jsonl", temp_dir=str(tmp_path)))
    workdir = tmp_path / "runs"
    workdir.mkdir()
    diff = SweepDiff(tmp_path / "old.jsonl", tmp_path / "new.jsonl", temp_dir=str(workdir), run_length=97)
    on_disk = list(diff)

    assert on_disk == in_memory
    assert diff.old.records == len(old)
    assert diff.old.duplicates == 1
    assert list(workdir.iterdir()) == []

    def domains(kind: str) -> set[str]:
        return {change["domain"] for change in on_disk if change["change"] == kind}

    assert domains("domain_removed") == {key_of(name) for name in names[:10]}
    assert domains("domain_added") == {"new.example"}
    assert domains("became_unreachable") == {key_of(names[index]) for index in range(10, len(names)) if index % 7 == 0}
    assert domains("became_reachable") == {"d20.example"}
    assert '"quoted".example' in domains("became_unreachable")


def test_diff_duplicate_domains_last_wins(tmp_path):
    old = [synthetic_record("a.example"), synthetic_record("a.example", status="unreachable"), synthetic_record("b.example")]
    new = [synthetic_record("a.example", status="unreachable"), synthetic_record("b.example")]
    write_lines(tmp_path / "old.jsonl", old)
    write_lines(tmp_path / "new.jsonl", new)
    for run_length in (1, 2, 100):
        diff = SweepDiff(tmp_path / "old.jsonl", tmp_path / "new.jsonl", run_length=run_length, temp_dir=str(tmp_path))
        assert list(diff) == [], run_length
        assert diff.old.duplicates == 1


# The rules, on facts built from small records

def probe(*, starttls: bool = False, tls: dict | None = None, banner: str = "mx ESMTP", greeted: bool = True) -> dict:
    keywords = {"PIPELINING": ""}
    if starttls:
        keywords["STARTTLS"] = ""
    record = {
        "address": "192.0.2.1", "port": 25, "connected": True, "completed": greeted,
        "banner": {"code": 220, "enhanced": None, "text": banner}, "greeting": "ehlo" if greeted else None,
        "ehlo": None, "helo": None, "keywords": keywords if greeted else None, "quit": None, "timings_ms": {}, "failure": None,
    }
    if tls is not None:
        record["tls"] = tls
    return record


def facts(status: str = "reachable", probes=(), mx_source: str | None = "mx", exchange_failure: str | None = None, addresses=None) -> dict:
    record = synthetic_record("x.example", status=status)
    record["mx_source"] = mx_source
    exchange = record["exchanges"][0]
    exchange["addresses"] = [{"address": f"192.0.2.{index + 1}", "family": "ipv4", "probe": item, "skipped": None} for index, item in enumerate(probes)]
    if addresses is not None:
        exchange["addresses"] = [{"address": address, "family": "ipv4", "probe": None, "skipped": None} for address in addresses]
    if exchange_failure:
        exchange["failure"] = {"phase": "dns", "reason": exchange_failure, "message": "", "refusal": None, "code": None, "enhanced": None}
    if mx_source is None:
        record["exchanges"] = []
    return facts_from_record(record)


def kinds(old, new, within_days: int = 14) -> list[str]:
    return [change["change"] for change in compare_facts(old, new, within_days)]


def test_rules_no_mx_answer_not_compared():
    assert kinds(facts(), facts(status="dns_error", mx_source=None)) == ["became_unreachable"]


def test_rules_failed_lookup_not_compared():
    assert kinds(facts(addresses=["192.0.2.1"]), facts(exchange_failure="servfail")) == []
    assert kinds(facts(addresses=["192.0.2.1"]), facts(addresses=[])) == ["addresses_changed"]


def test_rules_starttls_handshake_failure_is_lost():
    working = {"offered": True, "attempted": True, "accepted": True, "handshake_completed": True, "version": "TLSv1.3", "certificate": None}
    broken = {**working, "accepted": False, "handshake_completed": False, "version": None}
    old, new = facts(probes=[probe(starttls=True, tls=working)]), facts(probes=[probe(starttls=True, tls=broken)])
    [change] = compare_facts(old, new)
    assert change["change"] == "starttls_lost"
    assert (change["old"], change["new"]) == ("offered", "failed")
    assert change["hosts"] == [{"exchange": "mx.example.test", "address": "192.0.2.1", "starttls": "failed"}]


def test_rules_starttls_worst_host_counts():
    old = facts(probes=[probe(starttls=True), probe(starttls=True)])
    new = facts(probes=[probe(starttls=True), probe(starttls=False)])
    assert kinds(old, new) == ["starttls_lost"]


def test_rules_starttls_from_tls_key_alone():
    # A record whose keywords lack STARTTLS but whose tls object has offered: true.
    tls = {"offered": True, "attempted": False}
    assert kinds(facts(probes=[probe(tls=tls)]), facts(probes=[probe()])) == ["starttls_lost"]


def test_rules_unknown_tls_version_ignored():
    old_tls = {"offered": True, "attempted": True, "handshake_completed": True, "version": "TLSv1.3"}
    new_tls = {**old_tls, "version": "QUICv9"}
    assert kinds(facts(probes=[probe(starttls=True, tls=old_tls)]), facts(probes=[probe(starttls=True, tls=new_tls)])) == []


def test_rules_expiring_once():
    def with_cert(days: int, sha: str = SHA_A) -> dict:
        tls = {"offered": True, "attempted": True, "handshake_completed": True, "version": "TLSv1.3",
               "certificate": {"sha256": sha, "not_after": "2026-01-10T00:00:00Z", "days_to_expiry": days, "subject": "CN=x", "issuer": "CN=ca"}}
        return facts(probes=[probe(starttls=True, tls=tls)])

    assert kinds(with_cert(20), with_cert(10)) == ["certificate_expiring"]
    assert kinds(with_cert(10), with_cert(9)) == []  # already reported
    assert kinds(with_cert(10), with_cert(-1)) == []
    assert kinds(with_cert(10), with_cert(200, SHA_B)) == ["certificate_changed"]
    assert kinds(with_cert(10), with_cert(5, SHA_B)) == ["certificate_changed", "certificate_expiring"]
    assert kinds(None, with_cert(3)) == ["domain_added", "certificate_expiring"]


def test_rules_days_from_not_after():
    tls = {"offered": True, "attempted": True, "handshake_completed": True, "version": "TLSv1.3",
           "certificate": {"sha256": SHA_A, "not_after": "2026-01-08T00:00:00Z"}}
    new = facts(probes=[probe(starttls=True, tls=tls)])
    # synthetic_record starts at 2026-01-01T00:00:00Z: 7 days before notAfter.
    assert new["hosts"][0]["certificate"]["days_to_expiry"] == 7
    assert kinds(facts(probes=[probe(starttls=True)]), new, within_days=7) == ["certificate_expiring"]


def test_rules_banner_needs_both_sides():
    old = facts(probes=[probe(banner="a")])
    silent = copy.deepcopy(old)
    silent["hosts"][0]["banner"] = None
    assert kinds(old, silent) == []
    assert kinds(old, facts(probes=[probe(banner="b")])) == ["banner_changed"]
