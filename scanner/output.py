"""Output: JSON lines, written whole by a single owner, and the end-of-sweep summary.

Each record is encoded with ``ensure_ascii``, so every line is plain ASCII: server text
with control characters, escape sequences or bytes that were not UTF-8 reaches the
terminal only as JSON escapes, never raw.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import BinaryIO

import orjson

from .results import DomainResult, to_json_dict


def encode_line(result: DomainResult) -> bytes:
    """Return the record as one line of compact ASCII JSON, newline included.

    orjson encodes a line in about a fiftieth of the time json.dumps takes
    (benchmarks/encoding.py), and for printable ASCII text both give the same bytes.
    orjson writes other text as UTF-8, leaves DEL (0x7f) unescaped and rejects
    integers beyond 64 bits, so those records, rare in practice, go through
    json.dumps with ``ensure_ascii``, which escapes everything outside 0x20-0x7e.
    """
    record = to_json_dict(result)
    try:
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        line = None
    if line is None or not line.isascii() or b"\x7f" in line:
        line = (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
    return line


class LineWriter:
    """Writes one whole line per record, in one call, and flushes on request.

    A line goes to the stream in a single ``write``, so a stop by signal never leaves
    half a line. Only a kill or a crash between two writes of the operating system can
    tear the last line, and ``--resume`` repairs that.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.lines = 0

    def write(self, result: DomainResult, flush: bool = True) -> None:
        self._stream.write(encode_line(result))
        self.lines += 1
        if flush:
            self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()


@dataclasses.dataclass
class Summary:
    """Counts kept while a sweep runs, printed on stderr at the end."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    domains: int = 0
    duplicates: int = 0
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Entries skipped because an earlier run's output already contains them (--resume).
    resumed: int = 0
    # Domains in flight when a stop abandoned them; they have no line.
    abandoned: int = 0
    # The signal that stopped the sweep early, or None when it went through the list.
    stopped_by: str | None = None

    def add(self, result: DomainResult) -> None:
        self.domains += 1
        self.statuses[result.status.value] += 1
        if result.reason is not None:
            self.reasons[result.reason.value] += 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def render(self) -> str:
        elapsed = self.elapsed
        rate = self.domains / elapsed if elapsed > 0 else 0.0
        lines = [f"mxscan: {self.domains} domains in {elapsed:.1f} s ({rate:.1f} domains/s)"]
        if self.stopped_by:
            lines.append(f"  stopped by {self.stopped_by}: {self.abandoned} domains in flight abandoned; run again with --resume to finish")
        if self.resumed:
            lines.append(f"  already in the output (--resume): {self.resumed}")
        if self.duplicates:
            lines.append(f"  duplicate entries skipped: {self.duplicates}")
        lines.append("  by status:")
        for status, count in self.statuses.most_common():
            lines.append(f"    {status:<16} {count}")
        if self.reasons:
            lines.append("  by reason:")
            for reason, count in self.reasons.most_common():
                lines.append(f"    {reason:<24} {count}")
        return "\n".join(lines)
