"""Result records: what a sweep writes, one per input domain.

Everything that reaches the JSON output is a frozen dataclass or a string enum defined
here. ``to_json_dict`` turns a record into plain values; the JSON Schema shipped in
``scanner/schema/result.schema.json`` describes that form, and ``SCHEMA_VERSION`` names
it in every record so that readers can tell layouts apart.

The record follows how an admin reads a manual test: first the MX lookup, then for each
exchange and address the SMTP session phase by phase, and, for anything that failed, the
phase where it failed and a reason from a closed set.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

SCHEMA_VERSION = "mxscan/1"


class Status(str, enum.Enum):
    """Overall state of one input domain."""

    REACHABLE = "reachable"  # at least one mail host completed the handshake
    UNREACHABLE = "unreachable"  # mail hosts exist, none completed the handshake
    NULL_MX = "null_mx"  # the domain publishes "MX 0 ." (RFC 7505): it takes no mail
    NO_MAIL_DOMAIN = "no_mail_domain"  # no MX and no address: nothing to deliver to
    DNS_ERROR = "dns_error"  # the lookup itself failed
    NOT_PROBED = "not_probed"  # every address was skipped by the address policy
    INVALID_INPUT = "invalid_input"  # the entry is not a valid domain name
    SCANNER_ERROR = "scanner_error"  # a bug in mxscan; the record carries the exception


class Phase(str, enum.Enum):
    """Step of the lookup or SMTP session in which something failed."""

    INPUT = "input"
    DNS = "dns"
    POLICY = "policy"
    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    HELO = "helo"
    QUIT = "quit"
    SCANNER = "scanner"
    STARTTLS = "starttls"  # the STARTTLS command and its reply
    TLS = "tls"  # the TLS handshake after a 220 reply to STARTTLS
    MAIL = "mail"
    RCPT = "rcpt"
    RSET = "rset"
    DATA = "data"  # only in ``mxscan check --send``; a sweep never sends DATA


class Reason(str, enum.Enum):
    """Why a domain or an address is not reachable; a closed set.

    docs/reasons.md says what each value means for an admin; the JSON Schema lists the
    same values, and a test keeps the three in step.
    """

    # Input
    EMPTY_NAME = "empty_name"
    NAME_TOO_LONG = "name_too_long"
    INVALID_LABEL = "invalid_label"
    IP_ADDRESS_GIVEN = "ip_address_given"
    INVALID_IDN = "invalid_idn"

    # DNS
    NXDOMAIN = "nxdomain"
    NO_MX_NO_ADDRESS = "no_mx_no_address"
    SERVFAIL = "servfail"
    DNS_REFUSED = "dns_refused"
    DNS_TIMEOUT = "dns_timeout"
    DNS_BAD_RESPONSE = "dns_bad_response"
    CNAME_LOOP = "cname_loop"
    DNS_FAILURE = "dns_failure"
    NO_ADDRESS = "no_address"
    EXCHANGE_IS_IP_LITERAL = "exchange_is_ip_literal"
    NULL_MX = "null_mx"

    # Address policy
    IPV6_DISABLED = "ipv6_disabled"
    ADDRESS_NOT_GLOBAL = "address_not_global"
    ADDRESS_EXCLUDED = "address_excluded"

    # Connection
    CONNECTION_REFUSED = "connection_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECTION_RESET = "connection_reset"
    NETWORK_UNREACHABLE = "network_unreachable"
    CONNECTION_CLOSED = "connection_closed"

    # SMTP dialogue
    BANNER_TIMEOUT = "banner_timeout"
    BANNER_REJECTED = "banner_rejected"
    EHLO_REJECTED = "ehlo_rejected"
    REPLY_TIMEOUT = "reply_timeout"
    HOST_DEADLINE = "host_deadline"
    NOT_SMTP = "not_smtp"
    MALFORMED_REPLY = "malformed_reply"
    REPLY_TOO_LONG = "reply_too_long"
    SERVICE_CLOSING = "service_closing"

    # STARTTLS (RFC 3207); recorded in the probe's ``tls.failure``
    STARTTLS_REFUSED = "starttls_refused"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    TLS_TIMEOUT = "tls_timeout"

    # Bug in mxscan: the record carries the exception so the run goes on
    SCANNER_ERROR = "scanner_error"


class MxSource(str, enum.Enum):
    """Source of the list of mail exchanges."""

    MX = "mx"  # published MX records
    IMPLICIT = "implicit"  # no MX, so the domain itself (RFC 5321 section 5.1)
    NULL = "null"  # a null MX (RFC 7505)


class Refusal(str, enum.Enum):
    """Kind of refusal: try again later (temporary) or not at all (permanent)."""

    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class Greeting(str, enum.Enum):
    EHLO = "ehlo"
    HELO = "helo"


class RecipientVerdict(str, enum.Enum):
    """Verdict of the recipient probe on one address, from reply codes alone.

    Decided from the reply code and the RFC 3463 enhanced status code, never from
    the text; a temporary (4xx) refusal is never ``unknown_user``.
    """

    ACCEPTED = "accepted"  # RCPT got 2xx
    UNKNOWN_USER = "unknown_user"  # RCPT got 5xx with 5.1.1 (no such mailbox)
    REJECTED = "rejected"  # RCPT got another permanent refusal without a policy code
    SENDER_REJECTED = "sender_rejected"  # MAIL FROM got a permanent refusal, e.g. 550 5.1.7
    AUTH_REQUIRED = "auth_required"  # 530 to MAIL FROM or RCPT (RFC 4954)
    TEMPORARY = "temporary"  # another 4xx: greylisting, a full disk, a busy server
    RATE_LIMITED = "rate_limited"  # 421, or a 4xx with 4.5.3 or 4.7.28
    POLICY_BLOCK = "policy_block"  # 5xx with a 5.7.x security or policy code
    NO_VERDICT = "no_verdict"  # the session ended before RCPT had a reply; see ``failure``


class TranscriptDirection(str, enum.Enum):
    CLIENT = "C"
    SERVER = "S"


@dataclasses.dataclass(frozen=True, slots=True)
class ReplyRecord:
    """One SMTP reply as recorded: the code, the enhanced status code and the text.

    ``text`` contains the lines of a multi-line reply joined by newlines, each without its
    code and enhanced code; bytes that are not valid UTF-8 appear as ``\\xNN``.
    """

    code: int
    enhanced: str | None
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """Failure of an address or domain: the phase, the reason and the reply that showed it."""

    phase: Phase
    reason: Reason
    message: str
    refusal: Refusal | None = None
    code: int | None = None
    enhanced: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One line of an SMTP session, as sent or received, without its line end.

    ``t_ms`` counts milliseconds from the start of the connection attempt.
    """

    t_ms: float
    dir: TranscriptDirection
    line: str


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateInfo:
    """Facts read from the server's leaf certificate; none of them is trusted.

    ``subject`` and ``issuer`` are RFC 4514 strings, ``serial`` is upper-case hex,
    the dates are ISO 8601 in UTC, ``sha256`` is the fingerprint of the DER form.
    ``self_signed`` means the issuer equals the subject and the certificate's own
    key verifies its signature.
    """

    subject: str
    san: tuple[str, ...]
    issuer: str
    serial: str
    not_before: str
    not_after: str
    days_to_expiry: int
    key_type: str
    key_bits: int
    signature_algorithm: str
    self_signed: bool
    sha256: str


@dataclasses.dataclass(frozen=True, slots=True)
class TlsResult:
    """STARTTLS with one address, as separate facts.

    Each step has its own field, so a certificate problem never reads as "no
    STARTTLS": ``offered`` (the EHLO keyword), ``attempted`` (mxscan sent
    STARTTLS), ``accepted`` (the reply was 220), ``handshake_completed``, then the
    version, cipher and certificate, whether the chain verifies against the trust
    store, and whether the certificate names the MX host. ``name_matches`` is null
    in the cached probe and set per exchange name in the domain's record.
    ``ehlo`` and ``keywords`` are from the EHLO sent again over TLS.
    """

    offered: bool
    attempted: bool
    starttls: ReplyRecord | None = None
    accepted: bool = False
    handshake_completed: bool = False
    version: str | None = None
    cipher: str | None = None
    certificate: CertificateInfo | None = None
    chain_trusted: bool | None = None
    chain_error: str | None = None
    name_matches: bool | None = None
    ehlo: ReplyRecord | None = None
    keywords: dict[str, str] | None = None
    failure: Failure | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RecipientResult:
    """The recipient probe for one domain on one address: MAIL, RCPT, RSET, QUIT.

    ``mail_from`` and ``rcpt`` hold the replies, ``rcpt_address`` the address
    tried. With the catch-all check on, ``catch_all_rcpt`` is the reply to a
    second RCPT with a random local part and ``catch_all`` records whether it was
    accepted (null when it was not sent or got a temporary refusal). ``tls`` records
    whether the session ran over TLS. ``data`` and ``data_end`` (the replies to DATA
    and to the end of the message) are set only by ``mxscan check --send``; a sweep
    never sends DATA. ``transcript`` is this session's own, kept when transcripts are
    enabled.
    """

    rcpt_address: str
    sender: str
    verdict: RecipientVerdict
    mail_from: ReplyRecord | None = None
    rcpt: ReplyRecord | None = None
    rset: ReplyRecord | None = None
    catch_all: bool | None = None
    catch_all_rcpt: ReplyRecord | None = None
    catch_all_address: str | None = None
    tls: bool = False
    data: ReplyRecord | None = None
    data_end: ReplyRecord | None = None
    failure: Failure | None = None
    transcript: tuple[TranscriptLine, ...] | None = None
    transcript_dropped: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeResult:
    """The SMTP handshake with one address, phase by phase."""

    address: str
    port: int
    connected: bool
    completed: bool
    banner: ReplyRecord | None = None
    greeting: Greeting | None = None
    ehlo: ReplyRecord | None = None
    helo: ReplyRecord | None = None
    keywords: dict[str, str] | None = None
    quit: ReplyRecord | None = None
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    failure: Failure | None = None
    tls: TlsResult | None = None
    transcript: tuple[TranscriptLine, ...] | None = None
    transcript_dropped: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class AddressResult:
    """One address of a mail exchange: probed, or skipped with the reason."""

    address: str
    family: str
    probe: ProbeResult | None = None
    skipped: Failure | None = None
    recipient: RecipientResult | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ExchangeResult:
    """One mail exchange (an MX target, or the domain itself for an implicit MX)."""

    name: str
    preference: int
    addresses: tuple[AddressResult, ...] = ()
    failure: Failure | None = None
    addresses_left_out: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class DomainResult:
    """The record written for one input domain."""

    domain: str
    query_name: str | None
    tags: tuple[str, ...]
    status: Status
    started_at: str
    elapsed_ms: float
    failure: Failure | None = None
    mx_source: MxSource | None = None
    exchanges: tuple[ExchangeResult, ...] = ()
    mx_left_out: int = 0

    @property
    def reason(self) -> Reason | None:
        return self.failure.reason if self.failure else None


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def to_json_dict(result: DomainResult) -> dict[str, Any]:
    """Convert a domain record into the plain dict that the JSON Schema describes.

    The keys a jq user filters on most (status, reason) come first.
    """
    return {
        "schema": SCHEMA_VERSION,
        "domain": result.domain,
        "query_name": result.query_name,
        "tags": list(result.tags),
        "status": result.status.value,
        "reason": result.reason.value if result.reason else None,
        "failure": _plain(result.failure),
        "mx_source": result.mx_source.value if result.mx_source else None,
        "mx_left_out": result.mx_left_out,
        "exchanges": _plain(result.exchanges),
        "started_at": result.started_at,
        "elapsed_ms": result.elapsed_ms,
    }
