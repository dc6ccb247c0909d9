"""What each reply of the probe handshake means, and which step comes next.

The probe runs: banner, EHLO, HELO when EHLO is refused, STARTTLS when the server
advertises it (then EHLO again over TLS), then QUIT. The recipient probe adds MAIL
FROM, RCPT TO and RSET before QUIT. This module contains the decisions only: it takes a
reply and returns the next step and, when the address has failed, the failure to
record, or the recipient verdict. ``scanner.probe`` performs the steps.

RFC 5321 section 3.1: a client waits for the 220 greeting; a 554 (or any other 4xx or
5xx) greeting means the server will not talk, and the client should send QUIT and wait
for the reply. Section 4.1.4: when EHLO is not accepted, a client may fall back to
HELO. A 421 reply at any point means the server is closing the channel.
"""

from __future__ import annotations

import dataclasses
import enum

from ..results import Failure, Greeting, Phase, Reason, Refusal, RecipientVerdict
from .reply import Reply


class Step(str, enum.Enum):
    EHLO = "ehlo"
    HELO = "helo"
    QUIT = "quit"
    CLOSE = "close"  # close without QUIT: the server already closed or hung up
    TLS = "tls"  # run the TLS handshake (after a 220 reply to STARTTLS)
    CONTINUE = "continue"  # go on with the session's next step, still in plain text


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The next step, and the failure to record if the address has failed."""

    step: Step
    failure: Failure | None = None
    greeting: Greeting | None = None


def refusal_of(reply: Reply) -> Refusal | None:
    """Classify a negative reply as temporary or permanent.

    The enhanced status code wins when present (RFC 3463 section 3.1: class 4 is a
    persistent transient failure, class 5 a permanent one); its class always agrees with
    the reply code's first digit, since ``split_enhanced`` keeps only codes that match.
    """
    if reply.enhanced:
        return Refusal.TEMPORARY if reply.enhanced[0] == "4" else Refusal.PERMANENT
    if reply.is_temporary:
        return Refusal.TEMPORARY
    if reply.is_permanent:
        return Refusal.PERMANENT
    return None


def reply_failure(phase: Phase, reason: Reason, reply: Reply) -> Failure:
    first_line = reply.lines[0] if reply.lines else ""
    return Failure(
        phase=phase,
        reason=reason,
        message=f"{reply.code} {first_line}".strip(),
        refusal=refusal_of(reply),
        code=reply.code,
        enhanced=reply.enhanced,
    )


def after_banner(reply: Reply) -> Decision:
    if reply.code == 220:
        return Decision(Step.EHLO)
    if reply.code == 421:
        # The server is closing at once; RFC 5321 section 3.8 lets the client just close.
        return Decision(Step.CLOSE, reply_failure(Phase.BANNER, Reason.BANNER_REJECTED, reply))
    if reply.is_temporary or reply.is_permanent:
        return Decision(Step.QUIT, reply_failure(Phase.BANNER, Reason.BANNER_REJECTED, reply))
    return Decision(Step.QUIT, reply_failure(Phase.BANNER, Reason.MALFORMED_REPLY, reply))


def after_ehlo(reply: Reply) -> Decision:
    if reply.is_positive:
        return Decision(Step.QUIT, greeting=Greeting.EHLO)
    if reply.code == 421:
        return Decision(Step.CLOSE, reply_failure(Phase.EHLO, Reason.SERVICE_CLOSING, reply))
    return Decision(Step.HELO)


def after_helo(reply: Reply) -> Decision:
    if reply.is_positive:
        return Decision(Step.QUIT, greeting=Greeting.HELO)
    if reply.code == 421:
        return Decision(Step.CLOSE, reply_failure(Phase.HELO, Reason.SERVICE_CLOSING, reply))
    # EHLO was refused before HELO was tried, so both greetings have now been refused.
    return Decision(Step.QUIT, reply_failure(Phase.HELO, Reason.EHLO_REJECTED, reply))


# STARTTLS (RFC 3207)


def wants_starttls(keywords: dict[str, str] | None, enabled: bool) -> bool:
    """Decide whether to send STARTTLS: only after EHLO, and only when it is advertised."""
    return enabled and keywords is not None and "STARTTLS" in keywords


def after_starttls(reply: Reply) -> Decision:
    """220 starts the handshake (RFC 3207 section 4); any other reply is a refusal.

    After a refusal such as 454 the session goes on in plain text, as a sending MTA
    with opportunistic TLS would; a 421 closes it.
    """
    if reply.code == 220:
        return Decision(Step.TLS)
    failure = reply_failure(Phase.STARTTLS, Reason.STARTTLS_REFUSED, reply)
    if reply.code == 421:
        return Decision(Step.CLOSE, failure)
    return Decision(Step.CONTINUE, failure)


def after_tls_ehlo(reply: Reply) -> Decision:
    """RFC 3207 section 4.2: the client must send EHLO again once TLS is up."""
    if reply.is_positive:
        return Decision(Step.CONTINUE, greeting=Greeting.EHLO)
    if reply.code == 421:
        return Decision(Step.CLOSE, reply_failure(Phase.EHLO, Reason.SERVICE_CLOSING, reply))
    return Decision(Step.QUIT, reply_failure(Phase.EHLO, Reason.EHLO_REJECTED, reply))


# The recipient probe
#
# Verdicts come from the reply code and the RFC 3463 enhanced status code only; reply
# texts vary by server and language. Codes that decide a verdict:
#   530                 authentication required (RFC 4954 section 6 pairs it with 5.7.0)
#   421, 4.5.3          rate limited: closing for load, or "too many recipients"
#   other 4xx           temporary: greylisting, a busy or full server; never unknown user
#   5.7.x               policy block: relay denied, a blocklist, a security policy
#   5.1.1               unknown user ("bad destination mailbox address")
#   other 5xx           sender rejected at MAIL FROM, rejected at RCPT

_RATE_LIMIT_ENHANCED = {"4.5.3"}

# RFC 3461 section 4.1: the NOTIFY parameter requests delivery status notifications.
NOTIFY_PARAMETER = b"NOTIFY=SUCCESS,FAILURE"


def _shared_verdict(reply: Reply) -> RecipientVerdict | None:
    if reply.code == 530:
        return RecipientVerdict.AUTH_REQUIRED
    if reply.code == 421 or reply.enhanced in _RATE_LIMIT_ENHANCED:
        return RecipientVerdict.RATE_LIMITED
    if reply.is_temporary:
        return RecipientVerdict.TEMPORARY
    if reply.enhanced is not None and reply.enhanced.startswith("5.7."):
        return RecipientVerdict.POLICY_BLOCK
    return None


def verdict_after_mail(reply: Reply) -> RecipientVerdict | None:
    """Return the verdict that a MAIL FROM reply settles, or None to go on to RCPT."""
    if reply.is_positive:
        return None
    return _shared_verdict(reply) or RecipientVerdict.SENDER_REJECTED


def verdict_after_rcpt(reply: Reply) -> RecipientVerdict:
    if reply.is_positive:
        return RecipientVerdict.ACCEPTED
    shared = _shared_verdict(reply)
    if shared is not None:
        return shared
    if reply.enhanced == "5.1.1":
        return RecipientVerdict.UNKNOWN_USER
    return RecipientVerdict.REJECTED


def verdict_after_banner(reply: Reply) -> RecipientVerdict | None:
    """Return the verdict of a banner in a recipient session: 421 there is a connection rate limit."""
    if reply.code == 421:
        return RecipientVerdict.RATE_LIMITED
    return None


def catch_all_of(reply: Reply) -> bool | None:
    """Read the reply to a RCPT with a random local part: accepted, refused, or unknown (4xx)."""
    if reply.is_positive:
        return True
    if reply.is_permanent:
        return False
    return None


def rcpt_parameters(keywords: dict[str, str] | None) -> tuple[bytes, ...]:
    """Return the RCPT parameters: NOTIFY only when the server advertises DSN (RFC 3461 section 4)."""
    if keywords is not None and "DSN" in keywords:
        return (NOTIFY_PARAMETER,)
    return ()


def closes_session(reply: Reply) -> bool:
    """Check for 421, which means the server is closing the channel (RFC 5321 section 3.8)."""
    return reply.code == 421
