"""Compare two sweeps domain by domain and list what changed, as one JSON object per change.

Both files are sorted by domain on disk (``scanner.ops.ondisk``) and then merged like
a sorted merge-join, so memory does not grow with the number of domains. The change
types form a closed set, ``ChangeType``; docs/schema.md describes each one and the
shape of its line.

``compare_facts`` contains the rules and does no I/O. It takes the facts of one domain
in the old and the new sweep and returns the changes.
"""

from __future__ import annotations

import enum
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..results import Status
from .ondisk import DEFAULT_RUN_LENGTH, SortedFacts
from .records import DEFAULT_EXPIRY_DAYS, StartTls, domain_starttls, domain_tls_version, expiring_certificates, tls_version_rank


class ChangeType(str, enum.Enum):
    """Kind of change of one domain between two sweeps; a closed set."""

    DOMAIN_ADDED = "domain_added"  # only in the new sweep
    DOMAIN_REMOVED = "domain_removed"  # only in the old sweep
    BECAME_UNREACHABLE = "became_unreachable"  # was reachable, now any other status
    BECAME_REACHABLE = "became_reachable"  # was any other status, now reachable
    STATUS_CHANGED = "status_changed"  # another status or reason change, neither side reachable
    MX_CHANGED = "mx_changed"  # MX source, exchange names or preferences differ
    ADDRESSES_CHANGED = "addresses_changed"  # an exchange in both sweeps has other addresses
    BANNER_CHANGED = "banner_changed"  # a mail host in both sweeps greets with another banner
    STARTTLS_LOST = "starttls_lost"  # the domain's worst STARTTLS level went down
    STARTTLS_GAINED = "starttls_gained"  # the domain's worst STARTTLS level went up
    TLS_VERSION_LOWERED = "tls_version_lowered"  # the oldest negotiated TLS version is older
    CERTIFICATE_CHANGED = "certificate_changed"  # the set of certificate fingerprints differs
    CERTIFICATE_EXPIRING = "certificate_expiring"  # a certificate newly within the expiry window


def parse_change_types(text: str) -> set[ChangeType]:
    """Parse a comma-separated list of change types; ``all`` means every type.

    Raise ValueError naming the unknown entries and the valid ones.
    """
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names:
        raise ValueError("empty list of change types")
    if "all" in names:
        return set(ChangeType)
    valid = {change.value for change in ChangeType}
    unknown = sorted(names - valid)
    if unknown:
        raise ValueError(f"unknown change type {', '.join(unknown)}; valid types: all, {', '.join(change.value for change in ChangeType)}")
    return {ChangeType(name) for name in names}


def _change(change: ChangeType, old_facts: dict[str, Any] | None, new_facts: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """Build one output line; ``fields`` (old, new, hosts ...) follow domain, change and tags."""
    facts = new_facts or old_facts
    return {"domain": facts["key"], "change": change.value, "tags": facts["tags"], **fields}


def _status(facts: dict[str, Any]) -> dict[str, Any]:
    return {"status": facts["status"], "reason": facts["reason"]}


def _mx(facts: dict[str, Any]) -> dict[str, Any]:
    return {"mx_source": facts["mx_source"], "mx": [f"{preference} {name}" for preference, name in facts["mx"]]}


def _status_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    if _status(old) == _status(new):
        return []
    reachable = Status.REACHABLE.value
    if old["status"] == reachable and new["status"] != reachable:
        change = ChangeType.BECAME_UNREACHABLE
    elif old["status"] != reachable and new["status"] == reachable:
        change = ChangeType.BECAME_REACHABLE
    else:
        change = ChangeType.STATUS_CHANGED
    return [_change(change, old, new, old=_status(old), new=_status(new))]


def _mx_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    # A sweep without an MX answer (DNS error, NXDOMAIN, invalid input) knows no MX set;
    # the status change already reports that.
    if old["mx_source"] is None or new["mx_source"] is None:
        return []
    if _mx(old) == _mx(new):
        return []
    return [_change(ChangeType.MX_CHANGED, old, new, old=_mx(old), new=_mx(new))]


def _address_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    exchanges = []
    for name, new_addresses in new["exchanges"].items():
        old_addresses = old["exchanges"].get(name)
        if old_addresses is None or new_addresses is None:
            continue  # not in the old sweep, or a lookup failed on a resolver problem
        if old_addresses != new_addresses:
            exchanges.append({"exchange": name, "old": old_addresses, "new": new_addresses})
    if not exchanges:
        return []
    return [_change(ChangeType.ADDRESSES_CHANGED, old, new, exchanges=exchanges)]


def _hosts_by_address(facts: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(host["exchange"], host["address"]): host for host in facts["hosts"]}


def _banner_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    old_hosts = _hosts_by_address(old)
    hosts = []
    for key, host in _hosts_by_address(new).items():
        before = old_hosts.get(key)
        if before and before["banner"] and host["banner"] and before["banner"] != host["banner"]:
            hosts.append({"exchange": key[0], "address": key[1], "old": before["banner"], "new": host["banner"]})
    if not hosts:
        return []
    return [_change(ChangeType.BANNER_CHANGED, old, new, hosts=hosts)]


def _host_states(facts: dict[str, Any], field: str, describe) -> list[dict[str, Any]]:
    return [
        {"exchange": host["exchange"], "address": host["address"], field: describe(host)}
        for host in facts["hosts"]
        if host["greeted"]
    ]


def _starttls_label(host: dict[str, Any]) -> str:
    return StartTls(host["starttls"]).label


def _starttls_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    before, after = domain_starttls(old), domain_starttls(new)
    if before is None or after is None or before == after:
        return []
    change = ChangeType.STARTTLS_LOST if after < before else ChangeType.STARTTLS_GAINED
    return [_change(
        change, old, new,
        old=StartTls(before).label,
        new=StartTls(after).label,
        hosts=_host_states(new, "starttls", _starttls_label),
    )]


def _tls_version_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    before, after = domain_tls_version(old), domain_tls_version(new)
    if before is None or after is None or tls_version_rank(after) >= tls_version_rank(before):
        return []
    return [_change(
        ChangeType.TLS_VERSION_LOWERED, old, new,
        old=before,
        new=after,
        hosts=_host_states(new, "tls_version", lambda host: host["tls_version"]),
    )]


def _fingerprints(facts: dict[str, Any]) -> set[str]:
    return {host["certificate"]["sha256"] for host in facts["hosts"] if host["certificate"] and host["certificate"]["sha256"]}


def _certificate_entry(host: dict[str, Any]) -> dict[str, Any]:
    return {"exchange": host["exchange"], "address": host["address"], "certificate": host["certificate"]}


def _certificate_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    before, after = _fingerprints(old), _fingerprints(new)
    if not before or not after or before == after:
        return []
    hosts = [_certificate_entry(host) for host in new["hosts"] if host["certificate"] and host["certificate"]["sha256"] not in before]
    return [_change(ChangeType.CERTIFICATE_CHANGED, old, new, old=sorted(before), new=sorted(after), hosts=hosts)]


def _expiry_changes(old: dict[str, Any] | None, new: dict[str, Any], within_days: int) -> list[dict[str, Any]]:
    # Report a certificate once, when it enters the window: the old sweep did not
    # already show the same certificate (by fingerprint) as expiring.
    already = set()
    if old is not None:
        already = {host["certificate"]["sha256"] for host in expiring_certificates(old, within_days)}
    hosts = [_certificate_entry(host) for host in expiring_certificates(new, within_days) if host["certificate"]["sha256"] not in already]
    if not hosts:
        return []
    return [_change(ChangeType.CERTIFICATE_EXPIRING, old, new, within_days=within_days, hosts=hosts)]


def compare_facts(old: dict[str, Any] | None, new: dict[str, Any] | None, within_days: int = DEFAULT_EXPIRY_DAYS) -> list[dict[str, Any]]:
    """Return the changes of one domain from ``old`` to ``new`` facts, in ChangeType order.

    Either side may be None for a domain present in one sweep only. A new domain is
    also checked for expiring certificates, so a domain added with a certificate
    about to expire is not missed.
    """
    if old is None and new is None:
        return []
    if new is None:
        return [_change(ChangeType.DOMAIN_REMOVED, old, None, old=_status(old))]
    if old is None:
        return [_change(ChangeType.DOMAIN_ADDED, None, new, new=_status(new)), *_expiry_changes(None, new, within_days)]

    return [
        *_status_changes(old, new),
        *_mx_changes(old, new),
        *_address_changes(old, new),
        *_banner_changes(old, new),
        *_starttls_changes(old, new),
        *_tls_version_changes(old, new),
        *_certificate_changes(old, new),
        *_expiry_changes(old, new, within_days),
    ]


class SweepDiff:
    """The changes between two sweep files, in domain order, computed lazily.

    Iterate once. ``old`` and ``new`` are the two SortedFacts, whose counts
    (records, duplicates) are final once the iteration has ended.
    """

    def __init__(self, old_path: str | Path, new_path: str | Path, *, within_days: int = DEFAULT_EXPIRY_DAYS, temp_dir: str | None = None, run_length: int = DEFAULT_RUN_LENGTH) -> None:
        self.old_path = str(old_path)
        self.new_path = str(new_path)
        self.within_days = within_days
        self.temp_dir = temp_dir
        self.run_length = run_length
        self.old: SortedFacts | None = None
        self.new: SortedFacts | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="mxscan-diff-", dir=self.temp_dir) as workdir:
            self.old = SortedFacts(self.old_path, Path(workdir), self.run_length)
            self.new = SortedFacts(self.new_path, Path(workdir), self.run_length)
            yield from self._merge(iter(self.old), iter(self.new))

    def _merge(self, old_items: Iterator, new_items: Iterator) -> Iterator[dict[str, Any]]:
        old_item = next(old_items, None)
        new_item = next(new_items, None)
        while old_item is not None or new_item is not None:
            if new_item is None or (old_item is not None and old_item[0] < new_item[0]):
                yield from compare_facts(old_item[1], None, self.within_days)
                old_item = next(old_items, None)
            elif old_item is None or new_item[0] < old_item[0]:
                yield from compare_facts(None, new_item[1], self.within_days)
                new_item = next(new_items, None)
            else:
                yield from compare_facts(old_item[1], new_item[1], self.within_days)
                old_item = next(old_items, None)
                new_item = next(new_items, None)
