"""Input: the domain entries of a sweep, read lazily, and domain name normalisation.

Entries come from the YAML ``domains`` list (a name, or a mapping with ``domain`` and
optional ``tags``) and then from ``domains_file`` (one name per line, ``#`` starts a
comment). Names are normalised the way a resolver would see them: surrounding space
and one trailing dot removed, lower case, and internationalised names converted to
A-labels (IDNA 2008 with the UTS 46 mapping). An entry that is not a valid domain name
still becomes an ``Entry``, with the reason, so that it gets its own output line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import idna

from .results import Reason

log = logging.getLogger(__name__)

# RFC 1035 section 2.3.4: 255 octets on the wire, which is 253 characters in text form
# without the trailing dot; 63 octets per label.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

# Letters, digits and hyphens (RFC 1123 section 2.1), not starting or ending with a
# hyphen. Underscore is refused: no mail domain needs one, and it is the classic typo
# for a hyphen.
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Longest input line read; longer lines (a binary file, a list without newlines) become
# one invalid entry and are skipped without being held in memory.
MAX_INPUT_LINE = 4096

_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One input domain: the name as given, the name to look up, tags, and why it is invalid."""

    given: str
    name: str | None
    tags: tuple[str, ...] = ()
    invalid: Reason | None = None
    problem: str | None = None
    source: str = ""


class InvalidName(ValueError):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalise_name(given: str) -> str:
    """Return the A-label form of ``given`` to look up, or raise ``InvalidName``."""
    name = given.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidName(Reason.EMPTY_NAME, "the domain name is empty")

    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        raise InvalidName(Reason.IP_ADDRESS_GIVEN, f"{given!r} is an IP address, not a domain name")

    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidName(Reason.INVALID_IDN, f"{given!r} is not a valid internationalised name: {exc}") from None

    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(Reason.NAME_TOO_LONG, f"name is {len(name)} characters long, the maximum is {MAX_NAME_LENGTH}")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise InvalidName(Reason.INVALID_LABEL, f"{given!r} has an empty label (two dots in a row)")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidName(Reason.INVALID_LABEL, f"label {label[:20]!r}... is {len(label)} characters long, the maximum is {MAX_LABEL_LENGTH}")
        if not _LABEL_RE.match(label):
            raise InvalidName(Reason.INVALID_LABEL, f"label {label!r} may contain only letters, digits and inner hyphens")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise InvalidName(Reason.INVALID_IDN, f"label {label!r} is not a valid A-label: {exc}") from None
    if len(labels) < 2:
        raise InvalidName(Reason.INVALID_LABEL, f"{given!r} has a single label; give a full domain such as example.test")
    if labels[-1].isdigit():
        raise InvalidName(Reason.INVALID_LABEL, f"top-level label {labels[-1]!r} is all digits")
    return name


def make_entry(given: str, tags: tuple[str, ...] = (), source: str = "") -> Entry:
    try:
        name = normalise_name(given)
    except InvalidName as exc:
        # An invalid entry may hold anything, terminal escape sequences included.
        return Entry(given=escape_input(given), name=None, tags=tags, invalid=exc.reason, problem=escape_input(str(exc)), source=source)
    return Entry(given=given, name=name, tags=tags, source=source)


# reprlib bounds the work, not only the text: YAML aliases can nest a list of nine
# lists nine levels deep in a few hundred bytes, and a plain repr() would render all
# 9**9 leaves before any cut.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 120
_REPR.maxother = 120


def _short_repr(item: Any) -> str:
    return escape_input(_REPR.repr(item))[:200]


def escape_input(text: str) -> str:
    """Escape control characters in text from the input list, as server text is escaped."""
    return _CONTROL_RE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _entry_from_yaml(item: Any, index: int) -> Entry:
    source = f"domains[{index}]"
    if isinstance(item, str):
        return make_entry(item, source=source)
    if isinstance(item, dict):
        unknown = set(item) - {"domain", "tags"}
        given = item.get("domain")
        tags = item.get("tags") or ()
        if isinstance(tags, str):
            tags = (tags,)
        if not isinstance(given, str) or unknown or not isinstance(tags, (list, tuple)):
            problem = (
                f"{source}: expected a name or a mapping with 'domain' (a string) and optional 'tags' (a list); "
                f"got {_short_repr(item)}"
            )
            return Entry(given=_short_repr(item), name=None, invalid=Reason.INVALID_LABEL, problem=problem, source=source)
        return make_entry(given, tuple(escape_input(str(tag)) for tag in tags), source=source)
    problem = f"{source}: expected a domain name, got {type(item).__name__} {_short_repr(item)}"
    return Entry(given=_short_repr(item), name=None, invalid=Reason.INVALID_LABEL, problem=problem, source=source)


def read_domains_file(path: Path) -> Iterator[Entry]:
    """Yield one entry per non-blank, non-comment line of ``path``, without reading it whole."""
    # utf-8-sig drops the byte-order mark that Windows editors put at the start of a file.
    with path.open("r", encoding="utf-8-sig", errors="backslashreplace", newline=None) as handle:
        number = 0
        while True:
            line = handle.readline(MAX_INPUT_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_INPUT_LINE and not line.endswith("\n"):
                # Skip the rest of an overlong line without holding it in memory.
                while (rest := handle.readline(MAX_INPUT_LINE)) and not rest.endswith("\n"):
                    pass
                source = f"{path.name}:{number}"
                yield Entry(given=escape_input(line[:200]), name=None, invalid=Reason.NAME_TOO_LONG, problem=f"{source}: line longer than {MAX_INPUT_LINE} characters", source=source)
                continue
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            source = f"{path.name}:{number}"
            entry = make_entry(text, source=source)
            if entry.invalid:
                log.warning("%s: invalid domain %r: %s", source, text, entry.problem)
            yield entry


def iter_entries(domains: tuple[Any, ...], domains_file: Path | None) -> Iterator[Entry]:
    for index, item in enumerate(domains):
        yield _entry_from_yaml(item, index)
    if domains_file is not None:
        yield from read_domains_file(domains_file)
