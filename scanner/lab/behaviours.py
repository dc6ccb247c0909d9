"""Scripted behaviours of the lab SMTP servers, and the dialogue they play.

A behaviour is a frozen set of parameters. A preset is a named bundle of those
parameters (``esmtp``, ``drip``, ``quit_silent`` ...), and the dict form read from
YAML picks a preset and overrides any of its parameters::

    Behaviour.from_dict({"behaviour": "esmtp", "banner_delay": 0.5})

Parameters fall into three groups:

* ``greeting`` selects what happens when a client connects. ``smtp`` sends a
  banner and starts the command dialogue. The other greetings (``none``, ``close``,
  ``reset``, ``drip``, ``long_line``, ``endless``, ``http``, ``reject``) are played
  by the I/O layer in ``smtp_server``.
* Command-level parameters (``ehlo``, ``helo``, ``starttls``, ``quit_silent``,
  ``mail_from``, ``recipients`` ...) are read by :class:`SmtpDialogue`.
* Framing parameters (``bare_lf``, ``blank_lines``) change how replies are encoded.

:class:`SmtpDialogue` turns each command line into a :class:`Step` (the reply to
send and what the connection does next). It does no I/O, so tests can drive it with
plain strings.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# RFC 5321 section 4.5.3.1.8 requires a server to accept at least 100 recipients.
MAX_RECIPIENTS = 100

# The value advertised in the SIZE keyword (RFC 1870) and enforced at MAIL FROM.
MAX_MESSAGE_BYTES = 10_240_000

# RFC 5321 section 4.5.3.1.4 limits a command line to 512 octets with CRLF. The
# dialogue accepts a little more because real clients add ESMTP parameters.
MAX_COMMAND_LINE = 2048

DEFAULT_EXTENSIONS = (
    "PIPELINING",
    f"SIZE {MAX_MESSAGE_BYTES}",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "DSN",
)


class Greeting(enum.StrEnum):
    """The server's action when a client connects."""

    SMTP = "smtp"  # banner, then the command dialogue
    NONE = "none"  # accept, never send anything, read and discard input
    CLOSE = "close"  # close with FIN before sending anything
    RESET = "reset"  # close with RST (SO_LINGER 0) before sending anything
    DRIP = "drip"  # send a banner one byte per drip_interval, never ending it
    LONG_LINE = "long_line"  # send long_line_bytes without a newline, keep open
    ENDLESS = "endless"  # send 220- continuation lines until the server stops
    HTTP = "http"  # behave like an HTTP/1.1 server
    REJECT = "reject"  # reject_code banner (554 waits for QUIT, 421 closes)


class EhloMode(enum.StrEnum):
    """Reply mode for EHLO."""

    OK = "ok"
    NOT_IMPLEMENTED = "not_implemented"  # reject_code (500 or 502), HELO still works
    REJECT = "reject"  # reject_code, e.g. 501 5.5.4 Invalid domain
    CLOSE_MID_REPLY = "close_mid_reply"  # send half of the reply, then close


class HeloMode(enum.StrEnum):
    """Reply mode for HELO."""

    OK = "ok"
    REJECT = "reject"


class StartTlsMode(enum.StrEnum):
    """Reply mode for STARTTLS."""

    TLS = "tls"  # offered only when the host has a TLS context
    UNAVAILABLE = "unavailable"  # advertised, then 454 4.7.0 TLS not available
    GARBAGE = "garbage"  # advertised, 220, then random bytes instead of a handshake


class SenderOutcome(enum.StrEnum):
    """The server's verdict on MAIL FROM."""

    ACCEPT = "accept"
    SENDER_REJECT = "sender_reject"
    AUTH_REQUIRED = "auth_required"


class RecipientOutcome(enum.StrEnum):
    """The server's verdict on one RCPT TO address."""

    ACCEPT = "accept"
    UNKNOWN = "unknown"
    GREYLIST = "greylist"
    RATE_LIMIT = "rate_limit"
    POLICY = "policy"


@dataclass(frozen=True)
class Behaviour:
    """Parameters of one lab SMTP server; see the module docstring for the groups.

    Times are in seconds and sizes in bytes. ``recipients`` maps a lowercase
    address, ``*@domain`` or ``*`` to an outcome; lookup is described at
    :meth:`recipient_outcome`.
    """

    name: str = "esmtp"
    greeting: Greeting = Greeting.SMTP
    banner_delay: float = 0.0
    # Applies to every reply to a command. The banner waits for banner_delay only.
    per_reply_delay: float = 0.0
    # Empty means "<hostname> ESMTP mxscan lab".
    banner_text: str = ""
    banner_lines: int = 1
    garbage_banner: bool = False
    reject_code: int = 554
    reject_text: str = "5.7.1 Service unavailable"
    ehlo: EhloMode = EhloMode.OK
    helo: HeloMode = HeloMode.OK
    # Filler keywords added to the EHLO reply, for huge_ehlo.
    ehlo_filler_lines: int = 0
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    starttls: StartTlsMode = StartTlsMode.TLS
    quit_silent: bool = False
    bare_lf: bool = False
    blank_lines: bool = False
    mail_from: SenderOutcome = SenderOutcome.ACCEPT
    recipients: tuple[tuple[str, RecipientOutcome], ...] = ()
    catch_all: bool = False
    # 450 4.5.3 keeps the session, 421 4.7.0 closes it.
    rate_limit_code: int = 450
    drip_interval: float = 1.0
    long_line_bytes: int = 1024 * 1024
    # Pause between batches of endless_multiline lines. 0 sends as fast as the
    # client reads, still yielding to the event loop between batches.
    line_interval: float = 0.0
    garbage_bytes: int = 4096
    # RFC 5321 section 4.5.3.2.7 suggests a 5 minute server timeout.
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        _check_parameters(self)

    @classmethod
    def preset(cls, name: str) -> Behaviour:
        """Return the preset called ``name``; raise ValueError for an unknown one."""
        return cls.from_dict({"behaviour": name})

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Behaviour:
        """Build a behaviour from ``{"behaviour": preset, parameter: value, ...}``.

        A missing ``behaviour`` key means ``esmtp``. Raise ValueError that names
        the unknown keys, an unknown preset or an invalid value.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"behaviour config must be a mapping, got {type(config).__name__}")

        allowed = {field.name for field in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(config) - allowed - {"behaviour"})
        if unknown:
            raise ValueError(
                f"unknown behaviour parameters: {', '.join(map(str, unknown))}; "
                f"valid parameters are: {', '.join(sorted(allowed))}"
            )

        name = config.get("behaviour", "esmtp")
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(
                f"unknown behaviour {name!r}; valid behaviours are: {', '.join(sorted(PRESETS))}"
            )

        values: dict[str, Any] = {"name": name, **PRESETS[name]}
        for key, value in config.items():
            if key != "behaviour":
                values[key] = _convert_parameter(key, value)
        return cls(**values)

    def recipient_outcome(self, address: str) -> RecipientOutcome:
        """Return the verdict on ``address`` from the recipient table.

        Lookup order: the exact address, ``*@domain``, ``*``. Without a match a
        catch-all server accepts any address, and any server accepts postmaster
        because RFC 5321 section 4.5.1 requires that mailbox. Everything else is
        unknown.
        """
        address = address.lower()
        table = dict(self.recipients)
        local_part, _, domain = address.rpartition("@")

        for key in (address, f"*@{domain}", "*"):
            if key in table:
                return table[key]

        if self.catch_all or local_part == "postmaster" or address == "postmaster":
            return RecipientOutcome.ACCEPT
        return RecipientOutcome.UNKNOWN


_ENUM_PARAMETERS: dict[str, type[enum.StrEnum]] = {
    "greeting": Greeting,
    "ehlo": EhloMode,
    "helo": HeloMode,
    "starttls": StartTlsMode,
    "mail_from": SenderOutcome,
}
_FLOAT_PARAMETERS = (
    "banner_delay",
    "per_reply_delay",
    "drip_interval",
    "line_interval",
    "idle_timeout",
)
_INT_PARAMETERS = (
    "banner_lines",
    "reject_code",
    "ehlo_filler_lines",
    "rate_limit_code",
    "long_line_bytes",
    "garbage_bytes",
)
_BOOL_PARAMETERS = ("garbage_banner", "quit_silent", "bare_lf", "blank_lines", "catch_all")
_STR_PARAMETERS = ("banner_text", "reject_text")


def _convert_parameter(key: str, value: Any) -> Any:
    """Convert one YAML value to the type of the Behaviour field ``key``."""
    if key in _ENUM_PARAMETERS:
        enum_type = _ENUM_PARAMETERS[key]
        try:
            return enum_type(value)
        except ValueError:
            valid = ", ".join(member.value for member in enum_type)
            raise ValueError(f"invalid {key} {value!r}; valid values are: {valid}") from None

    if key in _FLOAT_PARAMETERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"invalid {key} {value!r}: expected a number of seconds")
        return float(value)

    if key in _INT_PARAMETERS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"invalid {key} {value!r}: expected an integer")
        return value

    if key in _BOOL_PARAMETERS:
        if not isinstance(value, bool):
            raise ValueError(f"invalid {key} {value!r}: expected true or false")
        return value

    if key in _STR_PARAMETERS:
        if not isinstance(value, str):
            raise ValueError(f"invalid {key} {value!r}: expected a string")
        return value

    if key == "extensions":
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"invalid extensions {value!r}: expected a list of strings")
        return tuple(value)

    if key == "recipients":
        return _convert_recipients(value)

    raise AssertionError(f"parameter {key} has no converter")


def _convert_recipients(value: Any) -> tuple[tuple[str, RecipientOutcome], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f"invalid recipients {value!r}: expected a mapping of address to outcome")

    table = []
    for address, outcome in value.items():
        if not isinstance(address, str) or not address:
            raise ValueError(f"invalid recipients key {address!r}: expected an address, *@domain or *")
        try:
            table.append((address.lower(), RecipientOutcome(outcome)))
        except ValueError:
            valid = ", ".join(member.value for member in RecipientOutcome)
            raise ValueError(
                f"invalid outcome {outcome!r} for recipient {address!r}; valid outcomes are: {valid}"
            ) from None
    return tuple(table)


def _check_parameters(behaviour: Behaviour) -> None:
    """Raise ValueError for values that are of the right type but out of range."""
    for key in _FLOAT_PARAMETERS:
        if getattr(behaviour, key) < 0:
            raise ValueError(f"invalid {key} {getattr(behaviour, key)!r}: must not be negative")
    if behaviour.idle_timeout <= 0:
        raise ValueError(f"invalid idle_timeout {behaviour.idle_timeout!r}: must be positive")

    if not 1 <= behaviour.banner_lines <= 1000:
        raise ValueError(f"invalid banner_lines {behaviour.banner_lines!r}: must be 1 to 1000")
    for key in ("ehlo_filler_lines", "long_line_bytes", "garbage_bytes"):
        if not 0 <= getattr(behaviour, key) <= 64 * 1024 * 1024:
            raise ValueError(f"invalid {key} {getattr(behaviour, key)!r}: must be 0 to 64 MiB")

    if not 400 <= behaviour.reject_code <= 599:
        raise ValueError(f"invalid reject_code {behaviour.reject_code!r}: must be a 4xx or 5xx code")
    if behaviour.rate_limit_code not in (450, 421):
        raise ValueError(f"invalid rate_limit_code {behaviour.rate_limit_code!r}: must be 450 or 421")

    for text in (behaviour.banner_text, behaviour.reject_text, *behaviour.extensions):
        if "\r" in text or "\n" in text:
            raise ValueError(f"invalid reply text {text!r}: must not contain CR or LF")


# Each preset lists the parameters it changes from the Behaviour defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "esmtp": {},
    "multiline_banner": {"banner_lines": 3},
    "banner_reject": {"greeting": Greeting.REJECT},
    "busy_421": {
        "greeting": Greeting.REJECT,
        "reject_code": 421,
        "reject_text": "4.3.2 Service not available, try again later",
    },
    "banner_delay": {"banner_delay": 2.0},
    "per_reply_delay": {"per_reply_delay": 1.0},
    "no_banner": {"greeting": Greeting.NONE},
    "helo_only": {
        "ehlo": EhloMode.NOT_IMPLEMENTED,
        "reject_code": 502,
        "reject_text": "5.5.1 Command not implemented",
    },
    "ehlo_reject": {
        "ehlo": EhloMode.REJECT,
        "helo": HeloMode.REJECT,
        "reject_code": 501,
        "reject_text": "5.5.4 Invalid domain",
    },
    "close_immediately": {"greeting": Greeting.CLOSE},
    "reset": {"greeting": Greeting.RESET},
    "drip": {"greeting": Greeting.DRIP},
    "long_line": {"greeting": Greeting.LONG_LINE},
    "endless_multiline": {"greeting": Greeting.ENDLESS},
    "garbage_text": {"garbage_banner": True},
    "bare_lf": {"bare_lf": True},
    "blank_lines": {"blank_lines": True},
    "huge_ehlo": {"ehlo_filler_lines": 10_000},
    "close_mid_reply": {"ehlo": EhloMode.CLOSE_MID_REPLY},
    "http": {"greeting": Greeting.HTTP},
    "quit_silent": {"quit_silent": True},
    "tls_garbage": {"starttls": StartTlsMode.GARBAGE},
    "starttls_454": {"starttls": StartTlsMode.UNAVAILABLE},
    "sender_reject": {"mail_from": SenderOutcome.SENDER_REJECT},
    "auth_required": {"mail_from": SenderOutcome.AUTH_REQUIRED},
    "catch_all": {"catch_all": True},
    "greylist": {"recipients": (("*", RecipientOutcome.GREYLIST),)},
}


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: a code and one text per line (RFC 5321 section 4.2)."""

    code: int
    lines: tuple[str, ...]

    @classmethod
    def single(cls, code: int, text: str) -> Reply:
        return cls(code, (text,))

    def encode(self, *, bare_lf: bool = False, blank_lines: bool = False) -> bytes:
        """Encode as ``code-text`` continuation lines and a final ``code text`` line.

        ``bare_lf`` ends lines with LF alone. ``blank_lines`` puts an empty line
        after each continuation line, which RFC 5321 does not allow.
        """
        return b"".join(self.encode_lines(bare_lf=bare_lf, blank_lines=blank_lines))

    def encode_lines(self, *, bare_lf: bool = False, blank_lines: bool = False) -> list[bytes]:
        """Encode each reply line separately, for writers that stop part way."""
        ending = b"\n" if bare_lf else b"\r\n"
        encoded = []
        last = len(self.lines) - 1
        for index, text in enumerate(self.lines):
            separator = " " if index == last else "-"
            line = f"{self.code}{separator}{text}".encode("utf-8", "surrogateescape") + ending
            if blank_lines and index != last:
                line += ending
            encoded.append(line)
        return encoded


class Action(enum.Enum):
    """The connection's next step after a reply is sent."""

    CONTINUE = "continue"
    CLOSE = "close"  # send the reply, then close
    START_TLS = "start_tls"  # send the reply, then run the TLS handshake
    SEND_GARBAGE = "send_garbage"  # send the reply, then random bytes instead of TLS
    READ_DATA = "read_data"  # send the 354 reply, then read the message
    HALF_REPLY_THEN_CLOSE = "half_reply_then_close"  # send half the reply lines, close
    HOLD = "hold"  # send nothing more, keep reading until the client leaves


@dataclass(frozen=True)
class Step:
    """The dialogue's response to one input: an optional reply and an action."""

    reply: Reply | None
    action: Action = Action.CONTINUE


# A MAIL or RCPT argument after "FROM:" or "TO:": a path in angle brackets, then
# optional ESMTP parameters (RFC 5321 section 4.1.2).
_PATH = re.compile(r"^\s*<([^<>]*)>(.*)$")

# Lines with characters that parsers often trip on, sent before a valid final line.
_GARBAGE_BANNER_LINES = (
    "nul \x00 byte",
    "ansi \x1b[31mred\x1b[0m \x1b[2J",
    # U+DCFF and friends encode back to the raw bytes 0xFF, 0xFE, 0xC3 0x28:
    # invalid UTF-8 sent on purpose.
    "invalid utf-8 \udcff\udcfe \udcc3(",
    "quotes \"double\" 'single' `back`",
    "backslashes \\ \\\\ \\x00 \\n",
)


class SmtpDialogue:
    """The server side of one SMTP session, as a state machine without I/O.

    Feed each received command line, without its line ending, to
    :meth:`receive_line`; after an ``Action.READ_DATA`` step, feed the message
    outcome to :meth:`receive_message`. Call :meth:`tls_started` after a
    successful TLS handshake. Commands follow RFC 5321 section 4.1.
    """

    def __init__(self, behaviour: Behaviour, hostname: str, *, tls_available: bool) -> None:
        self.behaviour = behaviour
        self.hostname = hostname
        self.tls_available = tls_available
        self.tls_active = False
        self.greeted = False
        self.rejected_banner = False
        self.sender: str | None = None
        self.recipients: list[str] = []

    def greeting(self) -> Step:
        """Return the banner step for the ``smtp`` and ``reject`` greetings."""
        behaviour = self.behaviour
        if behaviour.greeting is Greeting.REJECT:
            reply = Reply.single(behaviour.reject_code, behaviour.reject_text)
            # RFC 5321 section 3.1: after a 554 greeting the server waits for
            # QUIT, but a 421 means the service is closing the channel.
            if behaviour.reject_code == 421:
                return Step(reply, Action.CLOSE)
            self.rejected_banner = True
            return Step(reply)

        text = behaviour.banner_text or f"{self.hostname} ESMTP mxscan lab"
        lines = [text]
        lines.extend(f"{self.hostname} banner line {n}" for n in range(2, behaviour.banner_lines + 1))
        if behaviour.garbage_banner:
            # The garbage comes first, so the final line a client reads is valid.
            lines[:0] = _GARBAGE_BANNER_LINES
        return Step(Reply(220, tuple(lines)))

    def receive_line(self, line: str) -> Step:
        """Return the step for one command line (without CRLF)."""
        # RFC 5321 section 2.4 makes verbs case-insensitive.
        verb, _, argument = line.strip().partition(" ")
        verb = verb.upper()
        argument = argument.strip()

        if self.rejected_banner:
            if verb == "QUIT":
                return Step(Reply.single(221, "2.0.0 Bye"), Action.CLOSE)
            return Step(Reply.single(503, "5.5.1 Bad sequence of commands"))

        if len(line) > MAX_COMMAND_LINE:
            return Step(Reply.single(500, "5.5.2 Line too long"))

        handler = getattr(self, f"_on_{verb.lower()}", None) if verb.isalpha() else None
        if handler is None:
            return Step(Reply.single(502, "5.5.2 Command not recognized"))
        return handler(argument)

    def receive_message(self, size: int, *, too_long: bool) -> Step:
        """Return the reply after the message body of a DATA command has ended."""
        self._reset_transaction()
        if too_long or size > MAX_MESSAGE_BYTES:
            return Step(Reply.single(552, "5.3.4 Message size exceeds fixed limit"))
        return Step(Reply.single(250, "2.0.0 Message accepted"))

    def tls_started(self) -> None:
        """Forget the session state, as RFC 3207 requires after STARTTLS."""
        self.tls_active = True
        self.greeted = False
        self._reset_transaction()

    def ehlo_keywords(self) -> list[str]:
        """Return the EHLO keywords this session offers."""
        behaviour = self.behaviour
        keywords = list(behaviour.extensions)
        offers_tls = self.tls_available or behaviour.starttls is not StartTlsMode.TLS
        if offers_tls and not self.tls_active:
            keywords.append("STARTTLS")
        filler = [f"X-LAB-FILLER-{n:05d}" for n in range(behaviour.ehlo_filler_lines)]
        return filler + keywords

    def _reset_transaction(self) -> None:
        self.sender = None
        self.recipients = []

    def _on_ehlo(self, argument: str) -> Step:
        behaviour = self.behaviour
        if behaviour.ehlo in (EhloMode.NOT_IMPLEMENTED, EhloMode.REJECT):
            return Step(Reply.single(behaviour.reject_code, behaviour.reject_text))
        if not argument:
            return Step(Reply.single(501, "5.5.4 Syntax: EHLO hostname"))

        self.greeted = True
        self._reset_transaction()
        client = _printable(argument.split()[0])
        reply = Reply(250, (f"{self.hostname} greets {client}", *self.ehlo_keywords()))
        if behaviour.ehlo is EhloMode.CLOSE_MID_REPLY:
            return Step(reply, Action.HALF_REPLY_THEN_CLOSE)
        return Step(reply)

    def _on_helo(self, argument: str) -> Step:
        if self.behaviour.helo is HeloMode.REJECT:
            return Step(Reply.single(self.behaviour.reject_code, self.behaviour.reject_text))
        if not argument:
            return Step(Reply.single(501, "5.5.4 Syntax: HELO hostname"))

        self.greeted = True
        self._reset_transaction()
        return Step(Reply.single(250, self.hostname))

    def _on_mail(self, argument: str) -> Step:
        if not self.greeted:
            return Step(Reply.single(503, "5.5.1 Send EHLO or HELO first"))
        if self.sender is not None:
            return Step(Reply.single(503, "5.5.1 Nested MAIL command"))

        address, parameters = _parse_path(argument, "FROM:")
        if address is None:
            return Step(Reply.single(501, "5.5.4 Syntax: MAIL FROM:<address>"))
        size = _size_parameter(parameters)
        if size is None:
            return Step(Reply.single(501, "5.5.4 Invalid SIZE parameter"))
        if size > MAX_MESSAGE_BYTES:
            return Step(Reply.single(552, "5.3.4 Message size exceeds fixed limit"))

        outcome = self.behaviour.mail_from
        if outcome is SenderOutcome.SENDER_REJECT:
            return Step(Reply.single(550, "5.1.7 Sender address rejected"))
        if outcome is SenderOutcome.AUTH_REQUIRED:
            # RFC 4954 pairs 530 with 5.7.0. This server sends 5.7.1, so a client
            # must classify the reply by its 530 code.
            return Step(Reply.single(530, "5.7.1 Authentication required"))

        self.sender = address
        return Step(Reply.single(250, "2.1.0 Sender OK"))

    def _on_rcpt(self, argument: str) -> Step:
        if self.sender is None:
            return Step(Reply.single(503, "5.5.1 Need MAIL command first"))

        address, _ = _parse_path(argument, "TO:")
        if not address:
            return Step(Reply.single(501, "5.5.4 Syntax: RCPT TO:<address>"))
        if len(self.recipients) >= MAX_RECIPIENTS:
            return Step(Reply.single(452, "4.5.3 Too many recipients"))

        outcome = self.behaviour.recipient_outcome(address)
        if outcome is RecipientOutcome.ACCEPT:
            self.recipients.append(address)
            return Step(Reply.single(250, "2.1.5 Recipient OK"))
        if outcome is RecipientOutcome.UNKNOWN:
            return Step(Reply.single(550, "5.1.1 User unknown"))
        if outcome is RecipientOutcome.GREYLIST:
            return Step(Reply.single(451, "4.7.1 Greylisted, try again later"))
        if outcome is RecipientOutcome.POLICY:
            return Step(Reply.single(554, "5.7.1 Recipient rejected by policy"))
        if self.behaviour.rate_limit_code == 421:
            return Step(Reply.single(421, "4.7.0 Too many connections, closing"), Action.CLOSE)
        return Step(Reply.single(450, "4.5.3 Rate limit exceeded, try again later"))

    def _on_data(self, argument: str) -> Step:
        if argument:
            return Step(Reply.single(501, "5.5.4 DATA takes no arguments"))
        if self.sender is None or not self.recipients:
            return Step(Reply.single(503, "5.5.1 Need RCPT command first"))
        return Step(Reply.single(354, "Start mail input; end with <CRLF>.<CRLF>"), Action.READ_DATA)

    def _on_rset(self, argument: str) -> Step:
        self._reset_transaction()
        return Step(Reply.single(250, "2.0.0 OK"))

    def _on_noop(self, argument: str) -> Step:
        return Step(Reply.single(250, "2.0.0 OK"))

    def _on_vrfy(self, argument: str) -> Step:
        return Step(Reply.single(252, "2.5.2 Cannot VRFY user"))

    def _on_help(self, argument: str) -> Step:
        return Step(Reply.single(214, "2.0.0 mxscan lab server"))

    def _on_quit(self, argument: str) -> Step:
        if self.behaviour.quit_silent:
            return Step(None, Action.HOLD)
        return Step(Reply.single(221, "2.0.0 Bye"), Action.CLOSE)

    def _on_starttls(self, argument: str) -> Step:
        mode = self.behaviour.starttls
        if self.tls_active:
            return Step(Reply.single(503, "5.5.1 TLS already active"))
        if argument:
            return Step(Reply.single(501, "5.5.4 STARTTLS takes no arguments"))
        if mode is StartTlsMode.UNAVAILABLE:
            return Step(Reply.single(454, "4.7.0 TLS not available"))
        if mode is StartTlsMode.GARBAGE:
            return Step(Reply.single(220, "2.0.0 Ready to start TLS"), Action.SEND_GARBAGE)
        if not self.tls_available:
            return Step(Reply.single(502, "5.5.1 STARTTLS not offered"))
        return Step(Reply.single(220, "2.0.0 Ready to start TLS"), Action.START_TLS)


def _parse_path(argument: str, prefix: str) -> tuple[str | None, str]:
    """Split ``FROM:<address> PARAMS`` into the address and the parameter text.

    Return ``(None, "")`` when the argument does not have that form. The null
    path ``<>`` gives an empty address.
    """
    if not argument.upper().startswith(prefix):
        return None, ""
    match = _PATH.match(argument[len(prefix):])
    if match is None:
        return None, ""
    address = match.group(1).strip()
    # A source route (RFC 5321 section 4.1.2, "@a,@b:user@c") is accepted and ignored.
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    return address, match.group(2).strip()


def _printable(text: str) -> str:
    """Replace control characters, so echoed client text cannot split a reply line."""
    return "".join(char if char.isprintable() else "?" for char in text[:255])


def _size_parameter(parameters: str) -> int | None:
    """Return the SIZE= value (RFC 1870), 0 when absent, None when invalid."""
    for parameter in parameters.split():
        key, _, value = parameter.partition("=")
        if key.upper() == "SIZE":
            return int(value) if value.isdigit() and len(value) <= 20 else None
    return 0
