"""The ``mxscan diff``, ``mxscan summary`` and ``mxscan report`` commands.

``add_commands`` adds their parsers to the ``mxscan`` subcommands, and ``HANDLERS``
maps each command name to its handler. Handlers return the exit status themselves
and print errors on standard error, naming the file and line:

* diff: 0 no change, 1 changes (of the ``--fail-on`` types), 2 trouble, like diff(1);
* summary and report: 0, or 2 for an unreadable input or output file.

Files written with ``-o`` appear whole or not at all (written to a temporary file in
the same folder, then renamed), so node_exporter's textfile collector and web servers
never read half a file.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .diff import ChangeType, SweepDiff, parse_change_types
from .records import DEFAULT_EXPIRY_DAYS, RecordsError
from .report import digest_changes, render_report
from .summary import DEFAULT_PROVIDER_LABELS, DEFAULT_TOP, render_json, render_prometheus, render_table, summarize

EXIT_SAME = 0
EXIT_CHANGED = 1
EXIT_TROUBLE = 2


class OutputError(Exception):
    """An output file that cannot be written; the message names it."""


@contextlib.contextmanager
def open_output(path: Path | None) -> Iterator[TextIO]:
    """Yield standard output, or a temporary file renamed to ``path`` when the block succeeds."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    folder = path.parent if str(path.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            yield stream
        # mkstemp creates 0600; a metrics file or a report is meant to be read by others.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _change_types(text: str) -> set[ChangeType]:
    try:
        return parse_change_types(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more days, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _metric_label(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not _LABEL_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*), got {text!r}")
    if name.startswith("__"):
        raise argparse.ArgumentTypeError(f"label names starting with __ are reserved by Prometheus: {name!r}")
    return name, value


# Label names that the Prometheus data model allows.
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _add_counting_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expiry-days", type=_days, default=DEFAULT_EXPIRY_DAYS, metavar="N", help=f"a certificate counts as expiring when it expires within N days (default {DEFAULT_EXPIRY_DAYS})")
    parser.add_argument("--top", type=_positive, default=DEFAULT_TOP, metavar="N", help=f"how many providers and expiring certificates to list (default {DEFAULT_TOP})")
    parser.add_argument("--provider-labels", type=_positive, default=DEFAULT_PROVIDER_LABELS, metavar="N", help=f"last N labels of an MX host name that name its provider, e.g. 3 for mx.example.co.uk (default {DEFAULT_PROVIDER_LABELS})")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the diff, summary and report parsers to the ``mxscan`` subcommands."""
    types = ", ".join(change.value for change in ChangeType)
    diff = commands.add_parser(
        "diff",
        help="list what changed between two sweeps, as JSON lines",
        description=f"Compare two sweep files domain by domain and write one JSON line per change. Change types: {types}. Exit status: 0 no change, 1 changes, 2 trouble.",
    )
    diff.add_argument("old", metavar="OLD.jsonl", help="the earlier sweep (.gz is read as gzip, - is standard input)")
    diff.add_argument("new", metavar="NEW.jsonl", help="the later sweep")
    diff.add_argument("-o", "--output", type=Path, metavar="CHANGES.jsonl", help="write the changes to this file instead of standard output")
    diff.add_argument("--fail-on", type=_change_types, default=None, metavar="TYPES", help="comma-separated change types that make the exit status 1 (default: all)")
    diff.add_argument("--only", type=_change_types, default=None, metavar="TYPES", help="comma-separated change types to write (default: all); changes not written do not count for --fail-on")
    diff.add_argument("--expiry-days", type=_days, default=DEFAULT_EXPIRY_DAYS, metavar="N", help=f"report a certificate when it comes within N days of expiry (default {DEFAULT_EXPIRY_DAYS})")
    diff.add_argument("--temp-dir", metavar="DIR", help="folder for the sorted runs of large files (default: the system temporary folder)")

    summary = commands.add_parser(
        "summary",
        help="count a sweep's results: a table, JSON or Prometheus metrics",
        description="Count the domains of a sweep file by status and reason, MX provider, TLS and certificate expiry.",
    )
    summary.add_argument("results", metavar="RESULTS.jsonl", help="the sweep file (.gz is read as gzip, - is standard input)")
    summary.add_argument("--format", choices=("table", "json", "prometheus"), default="table", help="table for people, json for programs, prometheus for the node_exporter textfile collector (default table)")
    summary.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to this file, replaced whole, instead of standard output (use a .prom name for node_exporter)")
    summary.add_argument("--metric-label", action="append", type=_metric_label, default=[], metavar="NAME=VALUE", help="label added to every Prometheus sample, e.g. sweep=customers; repeat for several")
    _add_counting_options(summary)

    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report of a sweep",
        description="Write one HTML file with charts of a sweep, and its changes since a previous sweep. The file makes no network requests.",
    )
    report.add_argument("results", metavar="RESULTS.jsonl", help="the sweep file")
    report.add_argument("--previous", metavar="OLD.jsonl", help="an earlier sweep: adds the changes since then")
    report.add_argument("-o", "--output", type=Path, required=True, metavar="REPORT.html", help="the HTML file to write")
    report.add_argument("--temp-dir", metavar="DIR", help="folder for the sorted runs of large files (default: the system temporary folder)")
    _add_counting_options(report)


def _error(message: str) -> int:
    print(f"mxscan: error: {message}", file=sys.stderr)
    return EXIT_TROUBLE


def command_diff(args: argparse.Namespace) -> int:
    fail_on = args.fail_on or set(ChangeType)
    only = {change.value for change in (args.only or set(ChangeType))}
    counts: collections.Counter = collections.Counter()
    diff = SweepDiff(args.old, args.new, within_days=args.expiry_days, temp_dir=args.temp_dir)
    try:
        with open_output(args.output) as stream:
            for change in diff:
                if change["change"] not in only:
                    continue
                counts[change["change"]] += 1
                stream.write(json.dumps(change, ensure_ascii=True, separators=(",", ":")) + "\n")
    except (RecordsError, OutputError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot sort the sweeps in the temporary folder {exc.filename or ''}: {exc.strerror or exc}")

    failing = sum(count for name, count in counts.items() if ChangeType(name) in fail_on)
    if not args.quiet:
        listed = ", ".join(f"{count} {name}" for name, count in counts.most_common()) or "none"
        print(f"mxscan diff: {diff.old.records} old and {diff.new.records} new records, {sum(counts.values())} changes ({listed})", file=sys.stderr)
        for side in (diff.old, diff.new):
            if side.duplicates:
                print(f"mxscan diff: {side.path}: {side.duplicates} duplicate domain records, the last of each used", file=sys.stderr)
    return EXIT_CHANGED if failing else EXIT_SAME


def command_summary(args: argparse.Namespace) -> int:
    try:
        summary = summarize(args.results, within_days=args.expiry_days, provider_labels=args.provider_labels)
        if args.format == "json":
            text = render_json(summary, args.top)
        elif args.format == "prometheus":
            text = render_prometheus(summary, args.top, dict(args.metric_label))
        else:
            text = render_table(summary, args.top)
        with open_output(args.output) as stream:
            stream.write(text)
    except (RecordsError, OutputError) as exc:
        return _error(str(exc))
    return EXIT_SAME


def command_report(args: argparse.Namespace) -> int:
    try:
        summary = summarize(args.results, within_days=args.expiry_days, provider_labels=args.provider_labels)
        previous = changes = None
        if args.previous:
            previous = summarize(args.previous, within_days=args.expiry_days, provider_labels=args.provider_labels)
            changes = digest_changes(SweepDiff(args.previous, args.results, within_days=args.expiry_days, temp_dir=args.temp_dir))
        page = render_report(summary, changes, previous, top=args.top)
        with open_output(args.output) as stream:
            stream.write(page)
    except (RecordsError, OutputError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot sort the sweeps in the temporary folder {exc.filename or ''}: {exc.strerror or exc}")
    if not args.quiet:
        print(f"mxscan report: wrote {args.output} ({summary.domains} domains)", file=sys.stderr)
    return EXIT_SAME


HANDLERS = {"diff": command_diff, "summary": command_summary, "report": command_report}
