"""Count one sweep's results and render the counts as a table, JSON or Prometheus metrics.

``summarize`` reads the file once, line by line. Memory does not grow with the number
of domains, except through the counters of distinct providers and tags (see the NOTE
in ``SweepSummary.add``).

The Prometheus form is the text exposition format (version 0.0.4) that the
node_exporter textfile collector reads from ``*.prom`` files.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import heapq
import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..results import Reason, Status
from .records import DEFAULT_EXPIRY_DAYS, domain_tls_label, expiring_certificates, facts_from_record, parse_time, read_records
DEFAULT_TOP = 10
# The soonest-expiring certificates kept for listing; the count covers all of them.
MAX_LISTED_CERTIFICATES = 50
# Labels of an MX host name that name its provider: mx1.mail.example.net -> example.net.
DEFAULT_PROVIDER_LABELS = 2


def provider_of(exchange: str, labels: int = DEFAULT_PROVIDER_LABELS) -> str:
    """Return the provider part of an MX host name: its last ``labels`` labels.

    NOTE: this is not the registrable domain. Under a public suffix of two labels
    (co.uk, com.au) the default of 2 names the suffix; pass a larger ``labels``
    for such sweeps. The Public Suffix List would fix it, at the cost of a dependency.
    """
    name = exchange.rstrip(".").lower()
    # An IP address given as MX target (a misconfiguration) is its own provider. No
    # top-level domain is all digits, so only such names need the slower parse.
    if ":" in name or name.rsplit(".", 1)[-1].isdigit():
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            pass
    return ".".join(name.split(".")[-labels:])


@dataclasses.dataclass
class SweepSummary:
    """Counts of one sweep, filled by ``add`` one domain's facts at a time."""

    path: str
    within_days: int = DEFAULT_EXPIRY_DAYS
    provider_labels: int = DEFAULT_PROVIDER_LABELS
    domains: int = 0
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    providers: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tls: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tags: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    expiring_domains: int = 0
    expiry_buckets: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: datetime.datetime | None = None
    finished: datetime.datetime | None = None
    # A heap of (-days, tiebreak, entry): the root is the latest-expiring entry kept.
    _soonest: list = dataclasses.field(default_factory=list)

    def add(self, facts: dict[str, Any]) -> None:
        self.domains += 1
        self.statuses[facts["status"]] += 1
        if facts["reason"]:
            self.reasons[facts["reason"]] += 1
        for tag in facts["tags"]:
            self.tags[tag] += 1
        self._add_time(facts)

        # NOTE: one counter entry per distinct provider (and tag). A sweep of millions
        # of self-hosted domains keeps millions of short strings here, at an estimated
        # 100 bytes each.
        if facts["mx_source"] == "mx":
            for provider in {provider_of(name, self.provider_labels) for _preference, name in facts["mx"] if name}:
                self.providers[provider] += 1

        label = domain_tls_label(facts)
        if label is not None:
            self.tls[label] += 1
        self._add_certificates(facts)

    def _add_time(self, facts: dict[str, Any]) -> None:
        started = parse_time(facts["started_at"])
        if started is None:
            return
        elapsed = facts["elapsed_ms"] if isinstance(facts["elapsed_ms"], (int, float)) else 0
        finished = started + datetime.timedelta(milliseconds=elapsed)
        self.started = started if self.started is None else min(self.started, started)
        self.finished = finished if self.finished is None else max(self.finished, finished)

    def _add_certificates(self, facts: dict[str, Any]) -> None:
        seen = set()
        for host in facts["hosts"]:
            certificate = host["certificate"]
            if certificate and isinstance(certificate["days_to_expiry"], int) and certificate["sha256"] not in seen:
                seen.add(certificate["sha256"])
                self.expiry_buckets[expiry_bucket(certificate["days_to_expiry"])] += 1

        expiring = expiring_certificates(facts, self.within_days)
        if not expiring:
            return
        self.expiring_domains += 1
        host = min(expiring, key=lambda item: item["certificate"]["days_to_expiry"])
        days = host["certificate"]["days_to_expiry"]
        entry = {
            "domain": facts["key"],
            "exchange": host["exchange"],
            "address": host["address"],
            "days_to_expiry": days,
            "not_after": host["certificate"]["not_after"],
            "subject": host["certificate"]["subject"],
        }
        item = (-days, self.domains, entry)
        if len(self._soonest) < MAX_LISTED_CERTIFICATES:
            heapq.heappush(self._soonest, item)
        elif item > self._soonest[0]:
            heapq.heapreplace(self._soonest, item)

    @property
    def soonest_expiring(self) -> list[dict[str, Any]]:
        """The kept expiring certificates, one per domain, soonest first."""
        return [entry for _days, _order, entry in sorted(self._soonest, key=lambda item: (-item[0], item[1]))]

    @property
    def duration_seconds(self) -> float | None:
        """Time from the first domain's start to the last domain's end, from the records' own times."""
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()

    def status_counts(self) -> dict[str, int]:
        """Counts for every Status value (zero included), then any unknown status found."""
        counts = {status.value: self.statuses.get(status.value, 0) for status in Status}
        counts.update({status: count for status, count in sorted(self.statuses.items()) if status not in counts})
        return counts

    def reason_counts(self) -> dict[str, int]:
        """Counts for every Reason value (zero included), then any unknown reason found."""
        counts = {reason.value: self.reasons.get(reason.value, 0) for reason in Reason}
        counts.update({reason: count for reason, count in sorted(self.reasons.items()) if reason not in counts})
        return counts

    def top_providers(self, count: int) -> list[tuple[str, int]]:
        return sorted(self.providers.items(), key=lambda item: (-item[1], item[0]))[:count]


# Certificate expiry buckets, as (label, highest days_to_expiry in the bucket).
EXPIRY_BUCKETS = (
    ("expired", -1),
    ("0-7 days", 7),
    ("8-14 days", 14),
    ("15-30 days", 30),
    ("31-90 days", 90),
    ("over 90 days", None),
)


def expiry_bucket(days: int) -> str:
    for label, highest in EXPIRY_BUCKETS:
        if highest is None or days <= highest:
            return label
    raise AssertionError("the last bucket has no upper bound")


def summarize(path: str | Path, within_days: int = DEFAULT_EXPIRY_DAYS, provider_labels: int = DEFAULT_PROVIDER_LABELS) -> SweepSummary:
    """Read a sweep file and count it; raise RecordsError for an unreadable file or line."""
    summary = SweepSummary(str(path), within_days=within_days, provider_labels=provider_labels)
    for _line, record in read_records(path):
        summary.add(facts_from_record(record))
    return summary


def _time_text(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(summary: SweepSummary, top: int = DEFAULT_TOP) -> dict[str, Any]:
    """Return the summary as plain values; docs/schema.md describes the keys."""
    return {
        "file": summary.path,
        "domains": summary.domains,
        "sweep": {
            "started_at": _time_text(summary.started),
            "finished_at": _time_text(summary.finished),
            "duration_seconds": summary.duration_seconds,
        },
        "statuses": summary.status_counts(),
        "reasons": summary.reason_counts(),
        "providers": [{"provider": name, "domains": count} for name, count in summary.top_providers(top)],
        "tls": dict(summary.tls.most_common()),
        "tags": dict(sorted(summary.tags.items())),
        "certificates": {
            "by_expiry": {label: summary.expiry_buckets.get(label, 0) for label, _highest in EXPIRY_BUCKETS},
            "expiring_within_days": summary.within_days,
            "expiring_domains": summary.expiring_domains,
            "soonest": summary.soonest_expiring[:top],
        },
    }


def render_json(summary: SweepSummary, top: int = DEFAULT_TOP) -> str:
    return json.dumps(to_json(summary, top), indent=2, ensure_ascii=False) + "\n"


# Table rendering for a terminal

def _percent(count: int, total: int) -> str:
    return f"{100 * count / total:5.1f}%" if total else "    -"


def _section(title: str, rows: Iterable[tuple[str, int]], total: int, heading: str = "domains") -> list[str]:
    rows = list(rows)
    if not rows:
        return []
    width = max(24, len(title), *(len(name) for name, _count in rows))
    lines = ["", f"{title:<{width}}  {heading:>9}  {'share':>6}"]
    lines.extend(f"{name:<{width}}  {count:>9}  {_percent(count, total)}" for name, count in rows)
    return lines


def render_table(summary: SweepSummary, top: int = DEFAULT_TOP) -> str:
    """Render the summary as aligned text tables for a terminal."""
    total = summary.domains
    lines = [f"mxscan summary of {summary.path}: {total} domains"]
    if summary.started is not None:
        lines.append(f"sweep: {_time_text(summary.started)} to {_time_text(summary.finished)} ({summary.duration_seconds:.1f} s)")

    lines += _section("Status", [(name, count) for name, count in summary.statuses.most_common()], total)
    lines += _section("Reason", summary.reasons.most_common(), total)
    lines += _section(f"Top {top} MX providers", summary.top_providers(top), total)
    greeted = sum(summary.tls.values())
    lines += _section("TLS (first mail host that answered)", summary.tls.most_common(), greeted)

    by_expiry = [(label, summary.expiry_buckets[label]) for label, _highest in EXPIRY_BUCKETS if summary.expiry_buckets[label]]
    lines += _section("Certificate expiry", by_expiry, sum(summary.expiry_buckets.values()), heading="certs")

    soonest = summary.soonest_expiring[:top]
    lines += ["", f"Domains with a certificate expiring within {summary.within_days} days: {summary.expiring_domains}"]
    for entry in soonest:
        lines.append(f"  {entry['days_to_expiry']:>4} days  {entry['domain']}  {entry['exchange']} [{entry['address']}]  notAfter {entry['not_after']}")
    return "\n".join(lines) + "\n"


# Prometheus text exposition format

def _label_value(value: str) -> str:
    # The exposition format escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_label_value(str(value))}"' for name, value in pairs.items()) + "}"


def _number(value: float | int) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Metrics:
    def __init__(self, common: dict[str, str]) -> None:
        self.common = common
        self.lines: list[str] = []

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[dict[str, str], float | int]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels({**self.common, **labels})} {_number(value)}")


def render_prometheus(summary: SweepSummary, top: int = DEFAULT_TOP, labels: dict[str, str] | None = None) -> str:
    """Render gauges in the text format that node_exporter's textfile collector reads.

    ``labels`` are added to every sample, to tell several sweeps apart on one host.
    The sweep times come from the records, so metrics written later still describe
    when the sweep ran.
    """
    metrics = _Metrics(labels or {})
    metrics.gauge("mxscan_domains", "Domains in the sweep.", [({}, summary.domains)])
    metrics.gauge("mxscan_domains_by_status", "Domains by status.", [({"status": name}, count) for name, count in summary.status_counts().items()])
    metrics.gauge("mxscan_domains_by_reason", "Domains by the reason recorded with their status.", [({"reason": name}, count) for name, count in summary.reason_counts().items()])
    if summary.started is not None:
        metrics.gauge("mxscan_sweep_start_timestamp_seconds", "Unix time when the first domain of the sweep started.", [({}, summary.started.timestamp())])
        metrics.gauge("mxscan_sweep_end_timestamp_seconds", "Unix time when the last domain of the sweep finished.", [({}, summary.finished.timestamp())])
        metrics.gauge("mxscan_sweep_duration_seconds", "Seconds from the first domain's start to the last domain's end.", [({}, summary.duration_seconds)])
    metrics.gauge("mxscan_domains_by_provider", f"Domains with an MX host at each of the top {top} providers.", [({"provider": name}, count) for name, count in summary.top_providers(top)])
    metrics.gauge("mxscan_domains_by_tls", "Domains by TLS state of their first mail host that answered.", [({"tls": name}, count) for name, count in sorted(summary.tls.items())])
    metrics.gauge("mxscan_certificates_by_expiry", "Distinct certificates per domain by days to expiry.", [({"expiry": label}, summary.expiry_buckets.get(label, 0)) for label, _highest in EXPIRY_BUCKETS])
    metrics.gauge("mxscan_domains_certificate_expiring", "Domains with a certificate that expires within the given days or has expired.", [({"within_days": str(summary.within_days)}, summary.expiring_domains)])
    return "\n".join(metrics.lines) + "\n"
