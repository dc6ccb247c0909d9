"""A compact set of 64-bit key digests, for the duplicate check and for resume.

A Python ``set`` of a million 8-byte ``bytes`` costs about 90 MB (a 48-byte object and
a hash slot per member). This set stores the digests themselves in an open-addressing
table of unsigned 64-bit integers (``array('Q')``), 8 bytes a slot at a load of at
most one half. A million keys take 16 MB. Digests are BLAKE2b values, already uniform, so the low bits index the table
directly and linear probing stays short.
"""

from __future__ import annotations

from array import array

# Slots of a new table; a power of two. The table doubles when half full.
_INITIAL_SLOTS = 1 << 12

# Digest 0 marks an empty slot, so a real digest of 0 is stored as this value instead.
# The two keys then count as one, at odds of 2^-64.
_ZERO_STAND_IN = 1


def _zeros(slots: int) -> array:
    # Repeating a one-element array allocates the table once; array("Q", bytes(n))
    # would build an n-byte temporary first and double the peak.
    return array("Q", [0]) * slots


class DigestSet:
    """A set of non-negative 64-bit integers, typically ``int.from_bytes(key_digest(key))``."""

    def __init__(self, expected: int = 0) -> None:
        # Sized for ``expected`` members at the start, so a set that reaches that size
        # never needs an old and a new table at once while it grows.
        slots = _INITIAL_SLOTS
        while slots < 2 * expected:
            slots *= 2
        self._table = _zeros(slots)
        self._mask = slots - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _slot(self, digest: int) -> int:
        table = self._table
        mask = self._mask
        index = digest & mask
        while True:
            stored = table[index]
            if stored == 0 or stored == digest:
                return index
            index = (index + 1) & mask

    def __contains__(self, digest: int) -> bool:
        digest = digest or _ZERO_STAND_IN
        return self._table[self._slot(digest)] == digest

    def add(self, digest: int) -> bool:
        """Add ``digest``; return True when it was not in the set yet."""
        digest = digest or _ZERO_STAND_IN
        index = self._slot(digest)
        if self._table[index] == digest:
            return False
        self._table[index] = digest
        self._count += 1
        if self._count * 2 > len(self._table):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._table
        size = len(old) * 2
        self._table = _zeros(size)
        self._mask = size - 1
        for digest in old:
            if digest:
                self._table[self._slot(digest)] = digest
