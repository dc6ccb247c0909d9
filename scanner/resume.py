"""Resume: continue a stopped sweep from its own output file.

mxscan writes one whole JSON line per domain, so after a clean stop (SIGINT, SIGTERM)
every line is complete. After ``kill -9`` or a power loss the last line may be torn.
``prepare_resume`` cuts the file back to its last newline and reads the key of every
line: ``query_name``, or ``domain`` for an invalid entry, which has no query name. The
sweep then skips the entries with those keys and appends the rest, so the union is
exactly one line per domain.

Keys are kept as 64-bit digests in a ``DigestSet``, as the sweep's duplicate check
does: a few million of them cost far less than the names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from .errors import ConfigError
from .keyset import DigestSet
from .shard import key_digest

log = logging.getLogger(__name__)

# Bytes read at a time while looking for the last newline from the end of the file.
_TAIL_CHUNK = 64 * 1024


@dataclasses.dataclass
class ResumeState:
    """The domains that an earlier run wrote to its output file, and the repairs made to it."""

    done: DigestSet
    lines: int = 0
    torn_bytes: int = 0
    unreadable_lines: int = 0


def _last_newline_end(handle) -> int:
    """Return the offset just past the last newline of the open binary file, or 0."""
    end = handle.seek(0, os.SEEK_END)
    position = end
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        handle.seek(start)
        chunk = handle.read(position - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0


def repair_torn_tail(path: Path) -> int:
    """Cut ``path`` back to its last complete line and return the number of bytes removed."""
    with path.open("r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        keep = _last_newline_end(handle)
        if keep < end:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return end - keep


def record_key(line: bytes) -> str | None:
    """Return the resume key of one output line, or None when the line is not a record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    key = record.get("query_name") or record.get("domain")
    return key if isinstance(key, str) else None


def prepare_resume(path: Path) -> ResumeState:
    """Repair the tail of ``path`` and return the keys of the domains it already holds.

    A missing file is an empty start. Raise ``ConfigError`` when the file cannot be
    read or written.
    """
    if not path.exists():
        log.info("resume: %s does not exist yet; starting from the first domain", path)
        return ResumeState(done=DigestSet())
    try:
        torn = repair_torn_tail(path)
        state = ResumeState(done=DigestSet(), torn_bytes=torn)
        with path.open("rb") as handle:
            for line in handle:
                key = record_key(line)
                if key is None:
                    state.unreadable_lines += 1
                    continue
                state.done.add(key_digest(key))
                state.lines += 1
    except OSError as exc:
        raise ConfigError(f"--resume: cannot read and repair {path}: {exc.strerror}; check the path and its permissions") from None

    if torn:
        log.warning("resume: removed a torn last line of %d bytes from %s (the sweep was killed mid-write)", torn, path)
    if state.unreadable_lines:
        log.warning("resume: %d lines of %s are not mxscan records and were ignored", state.unreadable_lines, path)
    log.info("resume: %d domains already in %s are skipped", len(state.done), path)
    return state
