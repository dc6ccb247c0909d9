"""Shards: split one domain list over several processes or machines, deterministically.

An entry belongs to shard ``K`` of ``N`` when a hash of its key, taken modulo ``N``,
is ``K``. The key is the normalised name (so ``Example.ORG.`` and ``example.org`` land
in the same shard) or, for an entry that is not a valid name, the text as given. The
hash is BLAKE2b, not Python's ``hash``, so every process and machine agrees on it
whatever its ``PYTHONHASHSEED``. Every shard reads the whole list and keeps its part,
so the N shards are disjoint and their union is the whole list.
"""

from __future__ import annotations

import dataclasses
import hashlib

from .errors import ConfigError
from .inputs import Entry

# Largest shard count accepted; far more machines than a sweep needs.
MAX_SHARDS = 10_000


def entry_key(entry: Entry) -> str:
    """Return the key that identifies ``entry`` in shards and in resumed output."""
    return entry.name if entry.name is not None else entry.given


def key_digest(key: str) -> int:
    """Return the 64-bit BLAKE2b digest of ``key``, used for shards and for sets of keys."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``, with ``0 <= index < count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"--shard: the shard count must be from 1 to {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"--shard: the shard index must be from 0 to {self.count - 1} for {self.count} shards, got {self.index}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Parse ``K/N``, for example ``0/4`` for the first of four shards."""
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ConfigError(f"--shard: expected K/N with 0 <= K < N, for example 0/4, got {text!r}")
        return cls(int(index), int(count))

    def owns_digest(self, digest: int) -> bool:
        return digest % self.count == self.index

    def owns(self, entry: Entry) -> bool:
        return self.owns_digest(key_digest(entry_key(entry)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
