"""Render one sweep, and optionally its changes since a previous sweep, as one HTML file.

The page is self-contained and works offline: the charts are inline SVG drawn here,
the only stylesheet is one inline ``<style>`` element, and there is no script. A
Content-Security-Policy meta element with ``default-src 'none'`` allows only that
style element, by its SHA-256 hash, so a browser blocks any fetch that a future edit
might add (an image, a font, a script) instead of leaking the page's open.

Every value that comes from a record (domain names, banners, tags) is HTML-escaped:
sweep input and server text are untrusted.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import html
from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..results import Status
from .diff import ChangeType, SweepDiff
from .records import TLS_LABEL_FAILED, TLS_LABEL_NOT_OFFERED, tls_version_rank
from .summary import EXPIRY_BUCKETS, SweepSummary

# Changes listed in the table; the chart counts all of them. Thousands of rows make a
# page that browsers still open quickly and people do not read anyway.
MAX_LISTED_CHANGES = 500

# Bar colours by status; statuses not named here are drawn in the neutral colour.
_STATUS_TONE = {
    Status.REACHABLE.value: "good",
    Status.UNREACHABLE.value: "bad",
    Status.SCANNER_ERROR.value: "bad",
    Status.DNS_ERROR.value: "warn",
}
_CHANGE_TONE = {
    ChangeType.BECAME_REACHABLE.value: "good",
    ChangeType.STARTTLS_GAINED.value: "good",
    ChangeType.BECAME_UNREACHABLE.value: "bad",
    ChangeType.STARTTLS_LOST.value: "bad",
    ChangeType.TLS_VERSION_LOWERED.value: "bad",
    ChangeType.CERTIFICATE_EXPIRING.value: "warn",
}

STYLE = """
:root { color-scheme: light; --good: #2e7d32; --bad: #c62828; --warn: #ef8f00; --neutral: #5472a8; --muted: #666; }
* { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1d1d1d; background: #f4f5f7; }
header { background: #22303f; color: #fff; padding: 16px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: #d5dde6; font-size: 14px; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; padding: 16px 24px; }
section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px rgba(0, 0, 0, 0.12); overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { margin: 0 0 8px; font-size: 17px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { flex: 1 1 120px; border-left: 4px solid var(--neutral); padding: 4px 10px; }
.tile.good { border-color: var(--good); } .tile.bad { border-color: var(--bad); } .tile.warn { border-color: var(--warn); }
.tile b { display: block; font-size: 26px; }
.tile span { color: var(--muted); font-size: 13px; }
svg.chart { display: block; width: 100%; max-width: 640px; height: auto; }
svg.chart text { font-size: 12px; fill: #1d1d1d; }
svg.chart text.value { fill: var(--muted); }
svg.chart rect.good { fill: var(--good); } svg.chart rect.bad { fill: var(--bad); }
svg.chart rect.warn { fill: var(--warn); } svg.chart rect.neutral { fill: var(--neutral); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; word-break: break-all; }
p.empty, p.note { color: var(--muted); font-size: 13px; }
footer { padding: 0 24px 16px; color: var(--muted); font-size: 12px; }
"""


@dataclasses.dataclass
class ChangeDigest:
    """The changes between two sweeps as the report shows them: counts by type and the first rows."""

    previous_path: str
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    listed: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def digest_changes(diff: SweepDiff, limit: int = MAX_LISTED_CHANGES) -> ChangeDigest:
    """Count every change of ``diff`` by type and keep the first ``limit`` for the table."""
    digest = ChangeDigest(diff.old_path)
    for change in diff:
        digest.counts[change["change"]] += 1
        if len(digest.listed) < limit:
            digest.listed.append(change)
    return digest


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def bar_chart(rows: Iterable[tuple[str, int, str]], label_width: int = 230, width: int = 640) -> str:
    """Draw horizontal bars as inline SVG: one (label, value, tone) per row.

    The tone is one of good, bad, warn and neutral; the stylesheet colours it.
    """
    rows = list(rows)
    if not rows:
        return '<p class="empty">Nothing to show.</p>'
    row_height, bar_height = 22, 15
    highest = max(value for _label, value, _tone in rows) or 1
    bar_space = width - label_width - 70
    height = row_height * len(rows) + 4
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for index, (label, value, tone) in enumerate(rows):
        top = index * row_height + 2
        bar = max(1, round(bar_space * value / highest)) if value else 0
        parts.append(
            f'<g><title>{_escape(label)}: {value}</title>'
            f'<text x="{label_width - 8}" y="{top + 12}" text-anchor="end">{_escape(_shorten(label, 34))}</text>'
            f'<rect class="{tone}" x="{label_width}" y="{top}" width="{bar}" height="{bar_height}"></rect>'
            f'<text class="value" x="{label_width + bar + 6}" y="{top + 12}">{value}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _table(headings: list[str], rows: Iterable[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f'<th class="number">{_escape(text)}</th>' if index in numeric else f"<th>{_escape(text)}</th>" for index, text in enumerate(headings))
    body = []
    for row in rows:
        cells = "".join(f'<td class="number">{_escape(cell)}</td>' if index in numeric else f"<td>{_escape(cell)}</td>" for index, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return '<p class="empty">None.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(title: str, content: str, wide: bool = False, section_id: str = "") -> str:
    classes = ' class="wide"' if wide else ""
    identifier = f' id="{section_id}"' if section_id else ""
    return f"<section{classes}{identifier}><h2>{_escape(title)}</h2>{content}</section>"


def _tile(value: Any, label: str, tone: str = "neutral") -> str:
    return f'<div class="tile {tone}"><b>{_escape(value)}</b><span>{_escape(label)}</span></div>'


def describe_change(change: dict[str, Any]) -> str:
    """Return a one-line account of one change for the table."""
    kind = change["change"]
    old, new = change.get("old"), change.get("new")
    if kind in (ChangeType.DOMAIN_ADDED.value, ChangeType.DOMAIN_REMOVED.value):
        state = new or old
        return f"{state['status']} ({state['reason']})" if state["reason"] else state["status"]
    if kind in (ChangeType.BECAME_UNREACHABLE.value, ChangeType.BECAME_REACHABLE.value, ChangeType.STATUS_CHANGED.value):
        return f"{old['status']}/{old['reason'] or '-'} \u2192 {new['status']}/{new['reason'] or '-'}"
    if kind == ChangeType.MX_CHANGED.value:
        return f"{old['mx_source']}: {', '.join(old['mx']) or '-'} \u2192 {new['mx_source']}: {', '.join(new['mx']) or '-'}"
    if kind == ChangeType.ADDRESSES_CHANGED.value:
        return "; ".join(f"{item['exchange']}: {', '.join(item['old']) or '-'} \u2192 {', '.join(item['new']) or '-'}" for item in change["exchanges"])
    if kind == ChangeType.BANNER_CHANGED.value:
        return "; ".join(f"{item['address']}: {item['old']!r} \u2192 {item['new']!r}" for item in change["hosts"])
    if kind in (ChangeType.STARTTLS_LOST.value, ChangeType.STARTTLS_GAINED.value, ChangeType.TLS_VERSION_LOWERED.value):
        return f"{old} \u2192 {new}"
    if kind in (ChangeType.CERTIFICATE_CHANGED.value, ChangeType.CERTIFICATE_EXPIRING.value):
        parts = []
        for item in change["hosts"]:
            certificate = item["certificate"]
            parts.append(f"{item['address']}: {certificate['subject']}, notAfter {certificate['not_after']} ({certificate['days_to_expiry']} days)")
        return "; ".join(parts)
    return kind


def _tls_tone(label: str) -> str:
    rank = tls_version_rank(label)
    if rank is not None:
        return "good" if rank >= tls_version_rank("TLSv1.2") else "bad"
    return "bad" if label in (TLS_LABEL_NOT_OFFERED, TLS_LABEL_FAILED) else "neutral"


def _overview(summary: SweepSummary, changes: ChangeDigest | None) -> str:
    statuses = summary.status_counts()
    total = summary.domains
    reachable = statuses.get(Status.REACHABLE.value, 0)
    tiles = [
        _tile(total, "domains"),
        _tile(reachable, f"reachable ({100 * reachable / total:.1f}%)" if total else "reachable", "good"),
        _tile(statuses.get(Status.UNREACHABLE.value, 0), "unreachable", "bad"),
        _tile(summary.expiring_domains, f"certificates expiring within {summary.within_days} days", "warn"),
    ]
    if changes is not None:
        tiles.append(_tile(changes.total, "changes since the previous sweep", "warn" if changes.total else "good"))
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _status_section(summary: SweepSummary, previous: SweepSummary | None) -> str:
    counts = {name: count for name, count in summary.status_counts().items() if count}
    chart = bar_chart((name, count, _STATUS_TONE.get(name, "neutral")) for name, count in sorted(counts.items(), key=lambda item: -item[1]))
    if previous is None:
        return _section("Status", chart)
    before = previous.status_counts()
    names = [name for name, count in summary.status_counts().items() if count or before.get(name)]
    rows = [[name, before.get(name, 0), counts.get(name, 0), f"{counts.get(name, 0) - before.get(name, 0):+d}"] for name in names]
    return _section("Status", chart + _table(["status", "previous", "now", "change"], rows, numeric={1, 2, 3}))


def _certificate_section(summary: SweepSummary) -> str:
    buckets = [(label, summary.expiry_buckets.get(label, 0), "bad" if highest is not None and highest <= 14 else "neutral") for label, highest in EXPIRY_BUCKETS]
    if not any(count for _label, count, _tone in buckets):
        return _section("Certificate expiry", '<p class="empty">No certificates in this sweep: STARTTLS was not tested or no host offered it.</p>')
    rows = [[entry["days_to_expiry"], entry["domain"], entry["exchange"], entry["address"], entry["not_after"], entry["subject"]] for entry in summary.soonest_expiring]
    listing = f"<h2>Expiring within {summary.within_days} days: {_count(summary.expiring_domains, 'domain')}</h2>" + _table(["days", "domain", "exchange", "address", "notAfter", "subject"], rows, numeric={0})
    return _section("Certificate expiry", bar_chart(buckets) + listing, section_id="certificates")


def _changes_section(changes: ChangeDigest) -> str:
    rows = [(change.value, changes.counts.get(change.value, 0), _CHANGE_TONE.get(change.value, "neutral")) for change in ChangeType]
    chart = bar_chart(row for row in rows if row[1])
    if not changes.total:
        chart = '<p class="empty">No changes.</p>'
    listed = [[change["domain"], change["change"], ", ".join(change["tags"]), describe_change(change)] for change in changes.listed]
    note = ""
    if changes.total > len(changes.listed):
        note = f'<p class="note">The first {len(changes.listed)} of {changes.total} changes are listed; run mxscan diff for all of them.</p>'
    table = _table(["domain", "change", "tags", "detail"], listed)
    return _section(f"Changes since {changes.previous_path}", chart + note + table, wide=True, section_id="changes")


def render_report(summary: SweepSummary, changes: ChangeDigest | None = None, previous: SweepSummary | None = None, top: int = 10) -> str:
    """Build the HTML page for ``summary``, with the changes and previous counts when given."""
    reasons = [(name, count, "neutral") for name, count in summary.reasons.most_common()]
    providers = [(name, count, "neutral") for name, count in summary.top_providers(top)]
    tls = [(name, count, _tls_tone(name)) for name, count in summary.tls.most_common()]
    sweep_time = ""
    if summary.started is not None:
        sweep_time = f"<p>Sweep from {_escape(summary.started.strftime('%Y-%m-%d %H:%M:%S'))} to {_escape(summary.finished.strftime('%Y-%m-%d %H:%M:%S'))} UTC ({summary.duration_seconds:.1f} s)</p>"

    sections = [
        _section("Overview", _overview(summary, changes), wide=True),
        _status_section(summary, previous),
        _section("Reasons", bar_chart(reasons)),
        _section(f"Top {top} MX providers", bar_chart(providers)),
        _section("TLS on the first mail host that answered", bar_chart(tls)),
        _certificate_section(summary),
    ]
    if changes is not None:
        sections.append(_changes_section(changes))

    digest = base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")
    policy = f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; base-uri 'none'; form-action 'none'"
    title = f"mxscan report: {summary.path}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_escape(title)}</h1><p>{_count(summary.domains, 'domain')}</p>{sweep_time}</header>"
        f"<main>{''.join(sections)}</main>"
        f"<footer>Written by mxscan {_escape(__version__)}. Reasons are explained in docs/reasons.md of the mxscan sources.</footer>"
        "</body></html>\n"
    )
