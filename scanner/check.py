"""``mxscan check DOMAIN``: the manual mail-server test for one domain, explained.

Admins test a mail server by hand: look up the MX records, telnet to each host, send
EHLO, STARTTLS, MAIL FROM and RCPT TO, and read each reply. ``run_check`` does the same
with the sweep's own code (``Sweep.scan_domain``), so the record it returns is the one
a sweep writes for that domain. The differences: every address gets one session that
runs the whole test, from banner to RSET, and that session's transcript is always
kept. ``render`` turns the record into the text a person reads at a terminal: the MX
lookup, each session line by line as telnet would show it, a verdict per host and,
for each failure, the likely causes in plain words.

With ``CheckOptions.message`` set (``--send``), one more session sends a test message
through the first address that accepted the recipient: DATA, the message, and the
server's final reply. Only this command can send DATA; a sweep never does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.message
import email.policy
import email.utils
import logging

from .config import Settings
from .errors import ConfigError
from .inputs import make_entry
from .probe.prober import Prober, RecipientPlan, SessionPlan, SessionResult, catch_all_address
from .results import (
    AddressResult,
    DomainResult,
    Failure,
    MxSource,
    Phase,
    ProbeResult,
    Reason,
    RecipientResult,
    RecipientVerdict,
    ReplyRecord,
    Status,
    TlsResult,
)
from .sweep import Sweep

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckMessage:
    """The message that ``--send`` delivers: envelope and header addresses, subject and body."""

    sender: str
    recipient: str
    subject: str
    body: str

    def to_bytes(self) -> bytes:
        message = email.message.EmailMessage(policy=email.policy.SMTP)
        message["From"] = self.sender
        message["To"] = self.recipient
        message["Subject"] = self.subject
        message["Date"] = email.utils.formatdate(usegmt=True)
        # make_msgid without a domain calls socket.getfqdn(), which queries the system
        # resolver; the sender's domain is given instead.
        message["Message-ID"] = email.utils.make_msgid("mxscan", domain=self.sender.rpartition("@")[2] or "mxscan.invalid")
        message.set_content(self.body)
        return message.as_bytes()


def _check_address(option: str, value: str) -> None:
    """Reject an address that would break its SMTP command (RFC 5321 section 4.1.2)."""
    if "@" not in value or any(char in value for char in "<> ") or not value.isprintable():
        raise ConfigError(f"{option}: {value!r} is not a usable address; give local@domain without spaces, angle brackets or control characters")


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """Options of the manual test. An empty ``rcpt`` means postmaster@DOMAIN, an empty ``sender`` the null sender."""

    rcpt: str = ""
    sender: str = ""
    catch_all: bool = False
    message: CheckMessage | None = None

    def __post_init__(self) -> None:
        if self.rcpt:
            _check_address("--rcpt", self.rcpt)
        if self.sender:
            _check_address("--sender", self.sender)


class _CheckProber(Prober):
    """A prober that runs one full session per address, recipient steps included.

    ``Sweep._address`` requests the probe, then the recipient result. Here both come
    from the same session, so a check opens one connection per address.
    """

    def __init__(self, settings: Settings, recipient: RecipientPlan, trust_store=None) -> None:
        super().__init__(settings, trust_store)
        self.recipient_plan = recipient
        self._sessions: dict[str, asyncio.Future[SessionResult]] = {}

    def _session(self, address: str, hostname: str | None) -> "asyncio.Future[SessionResult]":
        future = self._sessions.get(address)
        if future is None:
            plan = SessionPlan(starttls=self.settings.tls.starttls, tls_hostname=hostname, recipient=self.recipient_plan)
            future = asyncio.ensure_future(self.session(address, plan))
            self._sessions[address] = future
        return future

    def probe(self, address: str, hostname: str | None = None) -> "asyncio.Future[ProbeResult]":
        async def probe_part() -> ProbeResult:
            return (await self._session(address, hostname)).probe

        return asyncio.ensure_future(probe_part())

    async def recipient(self, address: str, domain: str, hostname: str | None, use_tls: bool) -> RecipientResult:
        result = await self._session(address, hostname)
        assert result.recipient is not None
        # The probe's transcript already contains this session's lines.
        return dataclasses.replace(result.recipient, transcript=None, transcript_dropped=0)


def check_settings(settings: Settings) -> Settings:
    """Return ``settings`` with what the manual test needs: transcripts and the recipient steps."""
    return dataclasses.replace(
        settings,
        transcript=dataclasses.replace(settings.transcript, enabled=True),
        recipient=dataclasses.replace(settings.recipient, enabled=True),
    )


async def run_check(domain: str, settings: Settings, options: CheckOptions) -> DomainResult:
    """Run the manual test for ``domain`` and return its record, as a sweep writes it."""
    settings = check_settings(settings)
    entry = make_entry(domain)
    name = entry.name or domain
    plan = RecipientPlan(
        rcpt_address=options.rcpt or f"postmaster@{name}",
        sender=options.sender,
        catch_all_address=catch_all_address(name) if options.catch_all else None,
    )

    sweep = Sweep(settings)
    sweep.prober = _CheckProber(settings, plan, sweep.prober.runner.trust_store)
    try:
        result = await sweep.scan_domain(entry)
        if options.message is not None:
            result = await _send_test_message(sweep.prober, result, plan, options.message)
    finally:
        await sweep.close()
    return result


def _first_accepting(result: DomainResult) -> tuple[int, int] | None:
    for exchange_index, exchange in enumerate(result.exchanges):
        for address_index, address in enumerate(exchange.addresses):
            recipient = address.recipient
            if recipient is not None and recipient.verdict is RecipientVerdict.ACCEPTED:
                return exchange_index, address_index
    return None


async def _send_test_message(prober: Prober, result: DomainResult, plan: RecipientPlan, message: CheckMessage) -> DomainResult:
    """Send the test message through the first address that accepted the recipient.

    The new session's recipient part, with its DATA replies and transcript, takes the
    place of that address's recipient part in the record.
    """
    found = _first_accepting(result)
    if found is None:
        log.warning("no mail host accepted %s, so no test message was sent", plan.rcpt_address)
        return result
    exchange_index, address_index = found
    exchange = result.exchanges[exchange_index]
    address = exchange.addresses[address_index]
    use_tls = address.probe is not None and address.probe.tls is not None and address.probe.tls.handshake_completed

    send_plan = SessionPlan(
        starttls=use_tls,
        tls_hostname=exchange.name,
        certificate_facts=False,
        recipient=RecipientPlan(rcpt_address=message.recipient, sender=message.sender, message=message.to_bytes()),
    )
    log.info("sending the test message to %s through %s [%s]", message.recipient, exchange.name, address.address)
    sent = await prober.session(address.address, send_plan)

    new_address = dataclasses.replace(address, recipient=sent.recipient)
    addresses = list(exchange.addresses)
    addresses[address_index] = new_address
    exchanges = list(result.exchanges)
    exchanges[exchange_index] = dataclasses.replace(exchange, addresses=tuple(addresses))
    return dataclasses.replace(result, exchanges=tuple(exchanges))


def exit_status(result: DomainResult) -> int:
    """Return 0 when a mail host of the domain completed the handshake, 1 otherwise."""
    return 0 if result.status is Status.REACHABLE else 1



# What a person reads
#
# Everything that came from a server (reply texts, transcript lines, certificate
# names) passes through ``escape_control`` before it reaches the terminal, so a
# hostile banner cannot move the cursor, clear the screen or hide text.


def escape_control(text: str) -> str:
    """Replace every non-printable character with a visible escape such as \\x1b or \\u202e."""
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out)


class Painter:
    """ANSI colours when enabled; plain text otherwise (not a terminal, or NO_COLOR)."""

    _CODES = {"ok": "32", "bad": "31", "warn": "33", "client": "1", "server": "36", "head": "1;4", "dim": "2"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, style: str, text: str) -> str:
        if not self.enabled:
            return text
        return f"\033[{self._CODES[style]}m{text}\033[0m"


# Likely causes, in plain words, for each way a host can fail the manual test.
_CONNECT_CAUSES = (
    "the SMTP service on the host is down or not listening on this address",
    "a firewall at either end blocks the connection (many networks block outgoing port 25)",
    "the MX host name or its address record points to the wrong machine",
    "the port is wrong: mail exchangers listen on port 25",
)
_CAUSES_BY_REASON: dict[Reason, tuple[str, ...]] = {
    Reason.CONNECTION_REFUSED: _CONNECT_CAUSES,
    Reason.CONNECT_TIMEOUT: _CONNECT_CAUSES,
    Reason.NETWORK_UNREACHABLE: _CONNECT_CAUSES,
    Reason.BANNER_TIMEOUT: (
        "the server is overloaded, or delays its greeting on purpose (a tarpit)",
        "a firewall or proxy lets the connection through but not the data",
    ),
    Reason.NOT_SMTP: ("another service (a web server, SSH) listens on the SMTP port",),
    Reason.HOST_DEADLINE: ("the server answers very slowly, for example a byte at a time (a tarpit)",),
    Reason.REPLY_TIMEOUT: ("the server stopped answering in the middle of the session: overload, or a filter that stalls clients",),
    Reason.SERVICE_CLOSING: ("the server is closing sessions, usually because of load or a per-client rate limit",),
    Reason.NO_ADDRESS: ("the MX host name has no A or AAAA record: a typo in the MX record, or a deleted host",),
    Reason.EXCHANGE_IS_IP_LITERAL: ("the MX record names an IP address, which RFC 5321 does not allow: it must name a host",),
    Reason.NULL_MX: ("the domain publishes a null MX (RFC 7505): it states that it accepts no mail",),
    Reason.NXDOMAIN: ("the domain does not exist in DNS: a typo, or an expired registration",),
    Reason.NO_MX_NO_ADDRESS: ("the domain has neither MX records nor an address, so mail cannot be delivered to it",),
    Reason.SERVFAIL: ("the domain's name servers fail to answer: a broken DNSSEC signature or lame delegation",),
    Reason.DNS_TIMEOUT: ("the domain's name servers or the resolver did not answer in time",),
    Reason.STARTTLS_REFUSED: ("the server advertises STARTTLS but cannot use its certificate or key",),
    Reason.TLS_HANDSHAKE_FAILED: (
        "the client and the server share no TLS version or cipher",
        "the server's TLS setup is broken, or something between the hosts interferes with TLS",
    ),
    Reason.TLS_TIMEOUT: ("the server accepted STARTTLS but did not complete the TLS handshake in time",),
}
_CAUSES_BY_VERDICT: dict[RecipientVerdict, tuple[str, ...]] = {
    RecipientVerdict.UNKNOWN_USER: ("there is no such recipient: the mailbox does not exist on this server",),
    RecipientVerdict.SENDER_REJECTED: ("the server rejects the sender address: give one it accepts with --sender",),
    RecipientVerdict.AUTH_REQUIRED: (
        "the server does not accept anonymous submission: it wants the client to log in (AUTH) first",
        "this host may be a submission server rather than the domain's inbound mail exchanger",
    ),
    RecipientVerdict.TEMPORARY: (
        "greylisting: the server defers unknown senders once; a real MTA retries after some minutes",
        "the server is busy or its storage is full",
    ),
    RecipientVerdict.RATE_LIMITED: ("too many connections or messages from this client in a short time",),
    RecipientVerdict.POLICY_BLOCK: (
        "the server's policy rejects this client, for example because its address is on a blocklist",
        "the server does not relay for this recipient domain",
    ),
    RecipientVerdict.REJECTED: ("the server rejects the recipient permanently; its reply text names the reason",),
}


def likely_causes(exchange_name: str, address: AddressResult) -> list[str]:
    """Return the likely causes of each problem this address showed, most basic first."""
    causes: list[str] = []
    probe = address.probe
    if probe is not None and probe.failure is not None:
        causes.extend(_failure_causes(probe.failure))
    if probe is not None and probe.tls is not None:
        causes.extend(_tls_causes(exchange_name, probe.tls))
    recipient = address.recipient
    if recipient is not None:
        if recipient.failure is not None and recipient.verdict is RecipientVerdict.NO_VERDICT:
            causes.extend(_failure_causes(recipient.failure))
        causes.extend(_CAUSES_BY_VERDICT.get(recipient.verdict, ()))
    return list(dict.fromkeys(causes))


def _failure_causes(failure: Failure) -> tuple[str, ...]:
    if failure.reason is Reason.BANNER_REJECTED:
        if failure.code == 421 or failure.refusal is not None and failure.refusal.value == "temporary":
            return ("the server is busy or limits connections; it asks to try again later",)
        return ("the server refuses this client outright, often because the client's address is on a blocklist",)
    if failure.reason is Reason.EHLO_REJECTED:
        if failure.code == 501:
            return (
                "the name sent in EHLO is not a valid domain: set --ehlo-name to this host's real name",
                "the server restricts which clients may connect",
            )
        return ("the server rejects the client's greeting; its reply text names the reason",)
    if failure.reason in (Reason.CONNECTION_CLOSED, Reason.CONNECTION_RESET):
        if failure.phase is Phase.CONNECT or failure.phase is Phase.BANNER:
            return ("the server or a firewall drops connections from this client", *_CONNECT_CAUSES[:1])
        return ("the server ended the session early: a crash, a filter, or a limit on the session",)
    return _CAUSES_BY_REASON.get(failure.reason, ())


def _tls_causes(exchange_name: str, tls: TlsResult) -> list[str]:
    causes = list(_CAUSES_BY_REASON.get(tls.failure.reason, ())) if tls.failure is not None else []
    certificate = tls.certificate
    if certificate is not None and tls.chain_trusted is False:
        if certificate.self_signed:
            causes.append("the certificate is self-signed, so senders that verify certificates (MTA-STS, DANE without a pin) will not deliver")
        elif certificate.days_to_expiry < 0:
            causes.append("the certificate has expired: renew it")
        else:
            causes.append("the certificate chain does not lead to a trusted CA: an intermediate certificate may be missing from the server's configuration")
    if tls.name_matches is False:
        causes.append(f"the certificate does not name {exchange_name}: senders that check names (MTA-STS) will not deliver")
    return causes


def _reply_text(reply: ReplyRecord | None) -> str:
    if reply is None:
        return "no reply"
    first_line = reply.text.split("\n", 1)[0]
    enhanced = f" {reply.enhanced}" if reply.enhanced else ""
    return escape_control(f"{reply.code}{enhanced} {first_line}".strip())


def render(result: DomainResult, paint: Painter, resolvers: tuple[str, ...] = ()) -> str:
    """Render a check record as the text of a manual test: lookup, sessions, verdicts."""
    lines: list[str] = []
    _render_lookup(result, paint, resolvers, lines)
    for exchange in result.exchanges:
        for address in exchange.addresses:
            if address.probe is None:
                continue
            lines.append("")
            _render_session(exchange.name, address, paint, lines)
            lines.append("")
            _render_verdict(exchange.name, address, paint, lines)

    lines.append("")
    style = "ok" if result.status is Status.REACHABLE else "bad"
    summary = f"Result: {escape_control(result.domain)} is {result.status.value.replace('_', ' ')}"
    if result.failure is not None:
        summary += f" ({result.failure.reason.value}: {escape_control(result.failure.message)})"
    lines.append(paint(style, summary))
    if result.status is not Status.REACHABLE and result.failure is not None and not result.exchanges:
        for cause in _failure_causes(result.failure):
            lines.append(f"  - {cause}")
    return "\n".join(lines) + "\n"


def _render_lookup(result: DomainResult, paint: Painter, resolvers: tuple[str, ...], lines: list[str]) -> None:
    via = f" (resolver {', '.join(resolvers)})" if resolvers else " (system resolver)"
    lines.append(paint("head", f"MX lookup for {escape_control(result.query_name or result.domain)}{via}"))
    if result.mx_source is MxSource.IMPLICIT:
        lines.append("  no MX records: the domain's own address is the mail host (RFC 5321 section 5.1)")
    elif result.mx_source is MxSource.NULL:
        lines.append("  null MX \"0 .\": the domain accepts no mail (RFC 7505)")
    elif result.mx_source is None and result.failure is not None:
        lines.append(paint("bad", f"  lookup failed: {result.failure.reason.value}: {escape_control(result.failure.message)}"))

    width = max((len(exchange.name) for exchange in result.exchanges), default=0)
    for exchange in result.exchanges:
        if exchange.failure is not None:
            found = paint("bad", f"{exchange.failure.reason.value}: {escape_control(exchange.failure.message)}")
        else:
            found = ", ".join(_address_label(address) for address in exchange.addresses) or "no address"
        lines.append(f"  MX {exchange.preference:>5}  {escape_control(exchange.name):<{width}}  {found}")
    if result.mx_left_out:
        lines.append(f"  ({result.mx_left_out} more MX records not checked)")


def _address_label(address: AddressResult) -> str:
    if address.skipped is not None:
        return f"{address.address} (not probed: {escape_control(address.skipped.message)})"
    return address.address


def _render_session(exchange_name: str, address: AddressResult, paint: Painter, lines: list[str]) -> None:
    probe = address.probe
    assert probe is not None
    lines.append(paint("head", f"SMTP session with {escape_control(exchange_name)} [{probe.address}] port {probe.port}"))
    if probe.connected:
        lines.append(f"  connected in {probe.timings_ms.get('connect', 0):g} ms")
    elif probe.failure is not None:
        lines.append(paint("bad", f"  connection failed: {probe.failure.reason.value}: {escape_control(probe.failure.message)}"))
        return

    tls_pending = False
    for entry in probe.transcript or ():
        if entry.dir.value == "C":
            if tls_pending:
                _render_tls_notes(exchange_name, probe.tls, paint, lines)
                tls_pending = False
            lines.append(paint("client", f"  C: {escape_control(entry.line)}"))
            tls_pending = entry.line.upper() == "STARTTLS"
        else:
            lines.append(paint("server", f"  S: {escape_control(entry.line)}"))
    if tls_pending:
        _render_tls_notes(exchange_name, probe.tls, paint, lines)
    if probe.transcript_dropped:
        lines.append(paint("dim", f"  ({probe.transcript_dropped} more lines not kept; raise transcript.max_lines or transcript.max_chars)"))
    if probe.failure is not None:
        lines.append(paint("bad", f"  session ended: {probe.failure.reason.value}: {escape_control(probe.failure.message)}"))

    recipient = address.recipient
    if recipient is not None and recipient.transcript:
        # --send ran a second session through this address for the test message.
        lines.append(paint("head", f"Test message session with {escape_control(exchange_name)} [{probe.address}]"))
        for entry in recipient.transcript:
            prefix, style = ("C", "client") if entry.dir.value == "C" else ("S", "server")
            lines.append(paint(style, f"  {prefix}: {escape_control(entry.line)}"))


def _render_tls_notes(exchange_name: str, tls: TlsResult | None, paint: Painter, lines: list[str]) -> None:
    if tls is None or not tls.accepted:
        return
    if not tls.handshake_completed:
        message = tls.failure.message if tls.failure else "TLS handshake did not complete"
        lines.append(paint("bad", f"  -- {escape_control(message)}"))
        return
    lines.append(paint("dim", f"  -- TLS handshake completed: {tls.version}, {tls.cipher}"))
    certificate = tls.certificate
    if certificate is None:
        lines.append(paint("warn", "  -- no certificate"))
        return
    lines.append(paint("dim", f"  -- certificate: {escape_control(certificate.subject)}, issued by {escape_control(certificate.issuer)}"))
    names = ", ".join(escape_control(name) for name in certificate.san) or "none"
    lines.append(paint("dim", f"  -- names: {names}; valid until {certificate.not_after} ({certificate.days_to_expiry} days)"))
    lines.append(paint("dim", f"  -- key {certificate.key_type} {certificate.key_bits} bits, signed with {certificate.signature_algorithm}"))


def _yes_no(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "not checked"}[value]


def _render_verdict(exchange_name: str, address: AddressResult, paint: Painter, lines: list[str]) -> None:
    probe = address.probe
    assert probe is not None
    lines.append(paint("head", f"Verdict for {escape_control(exchange_name)} [{probe.address}]"))
    if probe.completed:
        lines.append(paint("ok", f"  SMTP: accepts connections and greets with {probe.greeting.value.upper()}"))
    elif probe.failure is not None:
        failure = probe.failure
        lines.append(paint("bad", f"  SMTP: failed at {failure.phase.value}: {failure.reason.value} ({escape_control(failure.message)})"))

    tls = probe.tls
    if tls is not None:
        lines.append(_tls_verdict(tls, paint))
        if tls.certificate is not None:
            chain = _yes_no(tls.chain_trusted)
            if tls.chain_error:
                chain += f" ({escape_control(tls.chain_error)})"
            style = "ok" if tls.chain_trusted and tls.name_matches else "warn"
            lines.append(paint(style, f"  certificate: chain trusted: {chain}; names {escape_control(exchange_name)}: {_yes_no(tls.name_matches)}"))

    recipient = address.recipient
    if recipient is not None:
        lines.extend(_recipient_verdict(recipient, paint))

    causes = likely_causes(exchange_name, address)
    if causes:
        lines.append("  likely causes:")
        lines.extend(f"    - {cause}" for cause in causes)


def _tls_verdict(tls: TlsResult, paint: Painter) -> str:
    if not tls.offered:
        return paint("warn", "  STARTTLS: not offered, so mail to this host travels unencrypted")
    if tls.handshake_completed:
        return paint("ok", f"  STARTTLS: offered and working, {tls.version} with {tls.cipher}")
    if tls.failure is not None:
        return paint("bad", f"  STARTTLS: offered but failed: {tls.failure.reason.value} ({escape_control(tls.failure.message)})")
    return paint("warn", "  STARTTLS: offered, not completed")


def _recipient_verdict(recipient: RecipientResult, paint: Painter) -> list[str]:
    lines = []
    sender = f"<{escape_control(recipient.sender)}>"
    lines.append(f"  MAIL FROM:{sender}: {_reply_text(recipient.mail_from)}")
    if recipient.rcpt is not None:
        lines.append(f"  RCPT TO:<{escape_control(recipient.rcpt_address)}>: {_reply_text(recipient.rcpt)}")
    style = "ok" if recipient.verdict is RecipientVerdict.ACCEPTED else "bad"
    verdict = recipient.verdict.value.replace("_", " ")
    if recipient.failure is not None and recipient.verdict is RecipientVerdict.NO_VERDICT:
        verdict += f" ({recipient.failure.reason.value}: {escape_control(recipient.failure.message)})"
    lines.append(paint(style, f"  recipient {escape_control(recipient.rcpt_address)}: {verdict}"))
    if recipient.catch_all is not None:
        text = "accepts any address (catch-all)" if recipient.catch_all else "rejects unknown addresses"
        lines.append(f"  catch-all check: {text} ({_reply_text(recipient.catch_all_rcpt)})")
    if recipient.data is not None:
        lines.append(f"  DATA: {_reply_text(recipient.data)}")
        if recipient.data_end is not None:
            queued = recipient.data_end.code // 100 == 2
            lines.append(paint("ok" if queued else "bad", f"  test message: {_reply_text(recipient.data_end)}"))
    return lines
