"""SMTP reply framing and parsing, without I/O.

A ``ReplyReader`` takes bytes as they arrive and hands back whole replies. It follows
RFC 5321 section 4.2: a reply is one or more lines, each starting with the same
three-digit code, where every line but the last has a hyphen after the code and the
last has a space (or nothing). Servers on the internet bend this, so the reader also
accepts a bare LF as a line end and skips blank lines between the lines of a reply.

Enhanced status codes (RFC 3463, "class.subject.detail" after the reply code) are split
off the text so that callers can decide on the code and the enhanced code together.

The reader keeps at most ``max_reply_bytes`` per reply and ``max_line_bytes`` per line.
A server that sends a megabyte without a newline, or a multi-line reply that never
ends, is stopped with ``ReplyTooLong`` instead of growing the buffer.
"""

from __future__ import annotations

import dataclasses
import re

# RFC 5321 section 4.5.3.1.5 limits a reply line to 512 octets, but real servers send
# longer EHLO and banner lines; 8 KiB is the line limit aiosmtplib 5.1 uses too.
DEFAULT_MAX_LINE_BYTES = 8192

# A whole reply, all lines together. The largest EHLO replies seen from big providers
# are a few KiB; 64 KiB leaves room for verbose banners and stops a reply that never
# ends long before it matters for memory.
DEFAULT_MAX_REPLY_BYTES = 65536

_ENHANCED_RE = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


class ReplyError(Exception):
    """The server's bytes cannot be read as an SMTP reply."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class NotSmtp(ReplyError):
    """A line does not start with a three-digit reply code."""


class MalformedReply(ReplyError):
    """Lines of one reply carry different codes, or the code is out of range."""


class ReplyTooLong(ReplyError):
    """A line or a whole reply exceeds the configured maximum."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A complete SMTP reply.

    ``lines`` contains each line's text after the code, separator and enhanced code,
    decoded as UTF-8 with invalid bytes kept as ``\\xNN`` escapes. ``message`` exists
    for aiosmtplib, whose protocol code reads ``.code`` and ``.message``.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    @property
    def message(self) -> str:
        return "\n".join(self.lines)

    @property
    def text(self) -> str:
        return self.message

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600


# Control characters (C0, DEL and C1), the backslash, and the surrogates that
# "surrogateescape" gives bytes that are not UTF-8. Escaping the backslash keeps
# "\xNN" unambiguous: a server that sends those four characters is stored as "\\xNN".
# Tab is escaped too, because jq's @tsv would read it as a column break.
_UNSAFE_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\udc80-\udcff]")


def _escape_char(match: re.Match) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if code >= 0xDC80:
        code -= 0xDC00
    return f"\\x{code:02x}"


def decode_text(data: bytes) -> str:
    """Decode server bytes for the record: printable text only, whatever the server sent.

    Valid UTF-8 stays as it is. Control characters and bytes that are not UTF-8 become
    ``\\xNN`` and the backslash ``\\\\``, so that even ``jq -r`` cannot copy a
    server's escape sequences to a terminal.
    """
    return _UNSAFE_TEXT_RE.sub(_escape_char, data.decode("utf-8", "surrogateescape"))


def split_enhanced(code: int, text: bytes) -> tuple[str | None, bytes]:
    """Split an RFC 3463 enhanced status code off the start of a reply line's text.

    The enhanced code counts only when its class digit matches the reply code's first
    digit, as RFC 3463 section 2 requires; otherwise the text is left whole.
    """
    match = _ENHANCED_RE.match(text)
    if match is None or int(match.group(1)) != code // 100:
        return None, text
    enhanced = b".".join(match.groups()).decode("ascii")
    return enhanced, text[match.end():]


class ReplyReader:
    """Frame bytes from a server into ``Reply`` objects.

    Call ``feed`` with whatever arrived, then ``next_reply`` until it returns ``None``.
    ``next_reply`` raises a ``ReplyError`` subclass when the bytes cannot be an SMTP
    reply; the reader is then spent and the connection should be closed.
    ``on_line``, when given, receives every raw line (without its line end) as it is read,
    which is how transcripts are kept.
    """

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        on_line=None,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_reply_bytes = max_reply_bytes
        self._on_line = on_line
        self._buffer = bytearray()
        self._scan_from = 0
        self._lines: list[bytes] = []
        self._reply_bytes = 0
        self._code: int | None = None

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet part of a returned reply."""
        return len(self._buffer) + self._reply_bytes

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        """Drop buffered bytes and any partial reply, as after STARTTLS (RFC 3207 section 4.2)."""
        self._buffer.clear()
        self._scan_from = 0
        self._lines.clear()
        self._reply_bytes = 0
        self._code = None

    def next_reply(self) -> Reply | None:
        while True:
            newline = self._buffer.find(b"\n", self._scan_from)
            if newline == -1:
                self._check_partial_line()
                return None

            raw = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scan_from = 0
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line_bytes:
                raise ReplyTooLong(f"reply line of {len(raw)} bytes exceeds {self.max_line_bytes}", raw[:200])
            if self._on_line is not None:
                self._on_line(raw)
            if not raw.strip():
                continue

            reply = self._take_line(raw)
            if reply is not None:
                return reply

    def _check_partial_line(self) -> None:
        self._scan_from = len(self._buffer)
        if len(self._buffer) > self.max_line_bytes:
            raise ReplyTooLong(
                f"more than {self.max_line_bytes} bytes without a line end", bytes(self._buffer[:200])
            )
        if self._reply_bytes + len(self._buffer) > self.max_reply_bytes:
            raise ReplyTooLong(f"reply exceeds {self.max_reply_bytes} bytes", bytes(self._buffer[:200]))

    def _take_line(self, raw: bytes) -> Reply | None:
        code_bytes = raw[:3]
        separator = raw[3:4]
        if len(code_bytes) < 3 or not code_bytes.isdigit() or separator not in (b"", b" ", b"-"):
            raise NotSmtp("line does not start with a three-digit reply code", raw[:200])

        code = int(code_bytes)
        if not 200 <= code <= 599:
            raise MalformedReply(f"reply code {code} is outside 200-599", raw[:200])
        if self._code is not None and code != self._code:
            raise MalformedReply(f"reply line has code {code} inside a {self._code} reply", raw[:200])

        self._code = code
        self._lines.append(raw[4:])
        self._reply_bytes += len(raw) + 2
        if self._reply_bytes > self.max_reply_bytes:
            raise ReplyTooLong(f"reply exceeds {self.max_reply_bytes} bytes", raw[:200])
        if separator == b"-":
            return None
        return self._finish(code)

    def _finish(self, code: int) -> Reply:
        enhanced = None
        lines = []
        for index, text in enumerate(self._lines):
            line_enhanced, rest = split_enhanced(code, text)
            if index == 0:
                enhanced = line_enhanced
            lines.append(decode_text(rest.rstrip()))

        self._lines = []
        self._reply_bytes = 0
        self._code = None
        return Reply(code=code, lines=tuple(lines), enhanced=enhanced)


_KEYWORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def parse_ehlo_keywords(reply: Reply) -> dict[str, str]:
    """Map each EHLO keyword (upper-cased) to its parameters, per RFC 5321 section 4.1.1.1.

    The first line is the server's greeting and is skipped. Lines that are not a valid
    ehlo-keyword are left out. Old servers write "AUTH=LOGIN" for "AUTH LOGIN"; that
    form is read as the keyword AUTH.
    """
    keywords: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if "=" in keyword:
            keyword, _, first_param = keyword.partition("=")
            params = f"{first_param} {params}"
        if not _KEYWORD_RE.match(keyword):
            continue
        keyword = keyword.upper()
        if keyword in keywords and params:
            keywords[keyword] = f"{keywords[keyword]} {params.strip()}".strip()
        else:
            keywords.setdefault(keyword, params.strip())
    return keywords
