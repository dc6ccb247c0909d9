"""Read sweep output files and reduce each record to the facts that diff, summary and report use.

A sweep writes one JSON object per line (see ``scanner.results``). The operations
commands read those files line by line, never whole. ``facts_from_record`` turns each
record into a small dict of facts: status and reason, the MX set, the addresses of
each exchange, and the banner, STARTTLS and TLS facts of each probed address. The
facts are plain JSON values, so the diff can write them to disk to sort them and read
them back unchanged.

TLS facts come from ``exchanges[].addresses[].probe.tls`` when the record has it. A
record without that key (written before STARTTLS was probed) is read as if it were
null: STARTTLS then counts as offered when the EHLO keywords list it, and nothing is
known about the handshake or the certificate.
"""

from __future__ import annotations

import datetime
import enum
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..results import Reason

# Reasons of a failed address lookup that come from the resolver, not from the zone.
# The exchange's addresses are then unknown rather than empty, so they are not compared.
RESOLVER_FAILURES = frozenset({
    Reason.SERVFAIL.value,
    Reason.DNS_REFUSED.value,
    Reason.DNS_TIMEOUT.value,
    Reason.DNS_BAD_RESPONSE.value,
    Reason.DNS_FAILURE.value,
})

# TLS protocol versions as Python's ssl module names them, oldest first.
TLS_VERSIONS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")

# Days before expiry from which a certificate counts as expiring: "next week", with a
# week of margin to renew before the alert turns urgent.
DEFAULT_EXPIRY_DAYS = 14

# Labels of domain_tls_label when no TLS version is known.
TLS_LABEL_NOT_OFFERED = "no STARTTLS"
TLS_LABEL_FAILED = "STARTTLS failed"
TLS_LABEL_NOT_TESTED = "STARTTLS offered, not tested"


class StartTls(enum.IntEnum):
    """Levels of STARTTLS support of one mail host, ordered so that a lower level is worse.

    The facts store the integer; ``StartTls(level).label`` is the name used in output.
    """

    NOT_OFFERED = 0  # EHLO did not list STARTTLS, or the server only took HELO
    FAILED = 1  # offered, tried, and the TLS handshake did not complete
    OFFERED = 2  # offered, and the handshake completed or was not tried

    @property
    def label(self) -> str:
        return self.name.lower()


class RecordsError(Exception):
    """An input file that cannot be read as mxscan output; the message names the file and line."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


def _open_binary(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _check_record(record: Any) -> str | None:
    """Return what is wrong with a parsed line, or None when it looks like an mxscan record."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    schema = record.get("schema")
    if not isinstance(schema, str) or not schema.startswith("mxscan/"):
        return f"not an mxscan record: 'schema' is {schema!r}, expected 'mxscan/1'"
    for key in ("domain", "status"):
        if not isinstance(record.get(key), str):
            return f"missing or invalid '{key}' (expected a string)"
    if not isinstance(record.get("exchanges", []), list):
        return "invalid 'exchanges' (expected a list)"
    return None


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)`` for each non-blank line of an mxscan output file.

    ``path`` may be ``-`` for standard input, and a name ending in ``.gz`` is read as
    gzip. Raise RecordsError, naming the file and line, for a file that cannot be
    opened or a line that is not an mxscan record.
    """
    name = str(path)
    try:
        stream = _open_binary(name)
    except OSError as exc:
        raise RecordsError(name, None, f"cannot open: {exc.strerror or exc}") from None

    # Lines are read as bytes and decoded one at a time, so that an encoding error
    # names its own line rather than the end of a read-ahead buffer.
    number = 0
    try:
        with stream:
            for number, raw in enumerate(stream, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise RecordsError(name, number, "not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RecordsError(name, number, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
                problem = _check_record(record)
                if problem is not None:
                    raise RecordsError(name, number, problem)
                yield number, record
    except (OSError, EOFError) as exc:
        # gzip raises BadGzipFile (an OSError) or EOFError for a damaged or cut file.
        raise RecordsError(name, number + 1, f"read failed: {exc}") from None


def domain_key(record: dict[str, Any]) -> str:
    """Return the name that identifies a domain across sweeps: the normalised name, else the entry."""
    return record.get("query_name") or record["domain"]


def parse_time(text: Any) -> datetime.datetime | None:
    """Parse an ISO 8601 time such as ``2026-01-31T12:00:00.000Z``; None when absent or invalid."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def _certificate(certificate: Any, scanned_at: datetime.datetime | None) -> dict[str, Any] | None:
    if not isinstance(certificate, dict):
        return None
    days = certificate.get("days_to_expiry")
    if not isinstance(days, int):
        # Older or partial records: count whole days from the scan to notAfter.
        not_after = parse_time(certificate.get("not_after"))
        days = (not_after - scanned_at).days if not_after and scanned_at else None
    return {
        "sha256": certificate.get("sha256"),
        "subject": certificate.get("subject"),
        "issuer": certificate.get("issuer"),
        "not_after": certificate.get("not_after"),
        "days_to_expiry": days,
    }


def _starttls_level(offered: bool, tls: dict[str, Any] | None) -> int:
    if not offered:
        return int(StartTls.NOT_OFFERED)
    if tls and tls.get("attempted") and tls.get("handshake_completed") is False:
        return int(StartTls.FAILED)
    return int(StartTls.OFFERED)


def _host_facts(exchange: str, address: str, probe: dict[str, Any], scanned_at: datetime.datetime | None) -> dict[str, Any]:
    banner = probe.get("banner")
    keywords = probe.get("keywords") or {}
    tls = probe.get("tls")
    if not isinstance(tls, dict):
        tls = None

    greeted = probe.get("greeting") is not None
    offered = any(str(keyword).upper() == "STARTTLS" for keyword in keywords) or bool(tls and tls.get("offered"))
    handshake = tls.get("handshake_completed") if tls else None
    return {
        "exchange": exchange,
        "address": address,
        "greeted": greeted,
        "banner": f"{banner.get('code')} {banner.get('text')}" if isinstance(banner, dict) else None,
        "starttls": _starttls_level(offered, tls) if greeted else None,
        "tls_version": tls.get("version") if tls and handshake else None,
        "certificate": _certificate(tls.get("certificate"), scanned_at) if tls else None,
    }


def facts_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """Reduce one record to the facts compared and counted by diff, summary and report.

    ``exchanges`` maps each exchange name to its sorted addresses, or to None when its
    address lookup failed on a resolver problem. ``hosts`` has one entry per probed
    address, in the record's order (preference order).
    """
    scanned_at = parse_time(record.get("started_at"))
    mx: list[list[Any]] = []
    exchanges: dict[str, list[str] | None] = {}
    hosts: list[dict[str, Any]] = []

    for exchange in record.get("exchanges") or []:
        name = exchange.get("name")
        mx.append([exchange.get("preference"), name])
        failure = exchange.get("failure") or {}
        if failure.get("reason") in RESOLVER_FAILURES:
            exchanges[name] = None
            continue
        addresses = exchange.get("addresses") or []
        exchanges[name] = sorted({item.get("address") for item in addresses})
        for item in addresses:
            probe = item.get("probe")
            if isinstance(probe, dict):
                hosts.append(_host_facts(name, item.get("address"), probe, scanned_at))

    mx.sort(key=lambda entry: (entry[0] if isinstance(entry[0], int) else -1, str(entry[1])))
    return {
        "key": domain_key(record),
        "domain": record["domain"],
        "tags": list(record.get("tags") or []),
        "status": record["status"],
        "reason": record.get("reason"),
        "mx_source": record.get("mx_source"),
        "mx": mx,
        "exchanges": exchanges,
        "hosts": hosts,
        "started_at": record.get("started_at"),
        "elapsed_ms": record.get("elapsed_ms"),
    }


def tls_version_rank(version: str | None) -> int | None:
    """Return the position of ``version`` in TLS_VERSIONS, or None for an unknown name."""
    try:
        return TLS_VERSIONS.index(version)
    except ValueError:
        return None


def domain_starttls(facts: dict[str, Any]) -> int | None:
    """Return the worst STARTTLS level among the hosts that greeted, or None when none did.

    A sender may be handed any of a domain's mail hosts, so the domain is only as good
    as its worst host.
    """
    levels = [host["starttls"] for host in facts["hosts"] if host["greeted"]]
    return min(levels) if levels else None


def domain_tls_version(facts: dict[str, Any]) -> str | None:
    """Return the oldest known TLS version negotiated with any of the domain's hosts."""
    ranked = [(tls_version_rank(host["tls_version"]), host["tls_version"]) for host in facts["hosts"] if host["tls_version"]]
    ranked = [(rank, version) for rank, version in ranked if rank is not None]
    return min(ranked)[1] if ranked else None


def domain_tls_label(facts: dict[str, Any]) -> str | None:
    """Describe TLS on the domain's first host that greeted: a version or a STARTTLS state.

    The first host in preference order is the one a sending server tries first. None
    when no host greeted.
    """
    for host in facts["hosts"]:
        if not host["greeted"]:
            continue
        if host["tls_version"]:
            return host["tls_version"]
        if host["starttls"] == StartTls.NOT_OFFERED:
            return TLS_LABEL_NOT_OFFERED
        if host["starttls"] == StartTls.FAILED:
            return TLS_LABEL_FAILED
        return TLS_LABEL_NOT_TESTED
    return None


def expiring_certificates(facts: dict[str, Any], within_days: int) -> list[dict[str, Any]]:
    """Return the domain's hosts whose certificate expires within ``within_days`` (or has expired)."""
    found = []
    for host in facts["hosts"]:
        certificate = host["certificate"]
        if certificate and isinstance(certificate["days_to_expiry"], int) and certificate["days_to_expiry"] <= within_days:
            found.append(host)
    return found
