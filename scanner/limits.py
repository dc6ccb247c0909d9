"""The process's open-files limit, and the sweep's connection bound kept below it.

Every SMTP connection is one file descriptor, and a sweep also needs descriptors for
its DNS channels, its input and output files and the interpreter itself. At start the
soft limit is raised to the hard limit, which a process may do without privileges. A
connection bound that would not fit under it is lowered with a warning, rather than
left to fail later as "Too many open files" on some unlucky domain.
"""

from __future__ import annotations

import dataclasses
import logging
import resource

log = logging.getLogger(__name__)

# Descriptors kept free for everything but SMTP connections: DNS channel sockets
# (one UDP socket each, and TCP for truncated answers), the input and output files,
# the event loop's own descriptors, and what Python and OpenSSL open. An estimate with
# a wide margin: a sweep with 20 DNS channels uses well under 100.
RESERVED_DESCRIPTORS = 256


@dataclasses.dataclass(frozen=True)
class FileLimit:
    """The open-files limit after ``raise_open_files_limit``: the soft and hard values."""

    soft: int
    hard: int

    @property
    def connections(self) -> int:
        """Return the most SMTP connections that fit under the soft limit."""
        return max(1, self.soft - RESERVED_DESCRIPTORS)


def raise_open_files_limit() -> FileLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Linux rejects an infinite soft limit for RLIMIT_NOFILE; fs.nr_open is the
        # real ceiling, and 1,048,576 is its default.
        target = 1 << 20
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        else:
            log.debug("open-files limit raised from %d to %d", soft, target)
            soft = target
    return FileLimit(soft=soft, hard=hard)


def cap_connections(requested: int, limit: FileLimit) -> int:
    """Return ``requested``, or the bound that fits under ``limit`` with a warning when it is lower."""
    allowed = limit.connections
    if requested <= allowed:
        return requested
    log.warning(
        "%d connections at once would not fit under the open-files limit of %d (%d kept for DNS and files); "
        "using %d. Raise the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit) to allow more.",
        requested, limit.soft, RESERVED_DESCRIPTORS, allowed,
    )
    return allowed
