"""A capped transcript of one SMTP session: each line sent or received, with its time."""

from __future__ import annotations

import time

from ..results import TranscriptDirection, TranscriptLine
from ..smtp.reply import decode_text


class Transcript:
    """Lines of one session, up to ``max_lines`` lines and ``max_chars`` characters.

    Times are milliseconds since ``started`` (a ``time.perf_counter`` value). Lines
    past either cap are not kept but counted in ``dropped``, so a server that sends
    ten thousand EHLO lines cannot make a record grow without bound.
    """

    def __init__(self, started: float, max_lines: int, max_chars: int) -> None:
        self.started = started
        self.max_lines = max_lines
        self.max_chars = max_chars
        self.lines: list[TranscriptLine] = []
        self.dropped = 0
        self._chars = 0

    def add(self, direction: TranscriptDirection, raw: bytes | str) -> None:
        text = decode_text(raw) if isinstance(raw, bytes) else raw
        if len(self.lines) >= self.max_lines or self._chars + len(text) > self.max_chars:
            self.dropped += 1
            return
        self._chars += len(text)
        t_ms = round((time.perf_counter() - self.started) * 1000, 1)
        self.lines.append(TranscriptLine(t_ms=t_ms, dir=direction, line=text))

    def client(self, raw: bytes | str) -> None:
        self.add(TranscriptDirection.CLIENT, raw)

    def server(self, raw: bytes) -> None:
        self.add(TranscriptDirection.SERVER, raw)
