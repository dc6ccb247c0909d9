"""Sort the facts of a whole sweep by domain on disk, so that two sweeps can be merged.

A sweep writes records in completion order, and a file can hold millions of them, so
the diff cannot hold both files in memory. Each file goes through an external merge
sort instead: facts are collected in runs of ``run_length`` entries, each run is
sorted in memory and written to a temporary file, and ``heapq.merge`` reads the runs
back in key order. Memory is bounded by one run plus one line per run file.

A run file has one line per domain: the key as a JSON string (so it contains no tab
or newline), a tab, and the facts as JSON. Both sweeps are sorted by the same encoded
key, which is all the merge-join in ``scanner.ops.diff`` needs.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .records import facts_from_record, read_records

log = logging.getLogger(__name__)

# Entries sorted in memory at a time. Facts take about 0.5 to 2 KB each as Python
# objects, so a run of 100,000 stays near 100 to 200 MB at the worst (an estimate,
# not a measurement).
DEFAULT_RUN_LENGTH = 100_000


def _read_run(path: Path) -> Iterator[tuple[str, str]]:
    with open(path, encoding="ascii") as stream:
        for line in stream:
            key, _, facts = line.partition("\t")
            yield key, facts


class SortedFacts:
    """The facts of one sweep file, sorted by domain key, with later duplicates winning.

    Iterating yields ``(sort key, facts)``, where the sort key is the domain key encoded
    as JSON; compare sort keys, not ``facts["key"]``, to merge two sweeps. ``duplicates`` counts records dropped because
    a later line had the same domain; it is final once the iteration has ended.
    """

    def __init__(self, path: str | Path, workdir: Path, run_length: int = DEFAULT_RUN_LENGTH) -> None:
        self.path = str(path)
        self.workdir = workdir
        self.run_length = max(1, run_length)
        self.records = 0
        self.duplicates = 0

    def _runs(self) -> tuple[list[Path], list[tuple[str, str]]]:
        """Write full runs to disk and return their paths and the last, partial run in memory."""
        paths: list[Path] = []
        buffer: list[tuple[str, str]] = []
        for _line, record in read_records(self.path):
            facts = facts_from_record(record)
            key = json.dumps(facts["key"], ensure_ascii=True)
            buffer.append((key, json.dumps(facts, ensure_ascii=True, separators=(",", ":")) + "\n"))
            self.records += 1
            if len(buffer) >= self.run_length:
                paths.append(self._write_run(buffer, len(paths)))
                buffer = []
        # sort is stable: equal keys keep their input order, so the last one stays last.
        buffer.sort(key=lambda item: item[0])
        return paths, buffer

    def _write_run(self, buffer: list[tuple[str, str]], index: int) -> Path:
        buffer.sort(key=lambda item: item[0])
        path = self.workdir / f"{os.getpid()}-{id(self)}-{index}.run"
        with open(path, "w", encoding="ascii") as stream:
            stream.writelines(f"{key}\t{rest}" for key, rest in buffer)
        log.debug("%s: wrote sorted run %s with %d entries", self.path, path, len(buffer))
        return path

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        paths, tail = self._runs()
        # heapq.merge keeps equal keys in the order of its inputs, and the runs are
        # given in file order with the in-memory tail last, so duplicates stay in order.
        merged = heapq.merge(*(_read_run(path) for path in paths), iter(tail), key=lambda item: item[0])
        try:
            for encoded_key, group in itertools.groupby(merged, key=lambda item: item[0]):
                count = 0
                for count, last in enumerate(group, start=1):
                    pass
                self.duplicates += count - 1
                yield encoded_key, json.loads(last[1])
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
