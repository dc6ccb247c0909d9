"""What each reply of the probe handshake means, and which step comes next.

The probe runs: banner, EHLO, HELO when EHLO is refused, then QUIT. This module holds
the decisions only: it takes a reply and returns the next step and, when the address
has failed, the failure to record. ``scanner.probe`` performs the steps.

RFC 5321 section 3.1: a client waits for the 220 greeting; a 554 (or any other 4xx or
5xx) greeting means the server will not talk, and the client should send QUIT and wait
for the reply. Section 4.1.4: when EHLO is not accepted, a client may fall back to
HELO. A 421 reply at any point means the server is closing the channel.
"""

from __future__ import annotations

import dataclasses
import enum

from ..results import Failure, Greeting, Phase, Reason, Refusal
from .reply import Reply


class Step(str, enum.Enum):
    EHLO = "ehlo"
    HELO = "helo"
    QUIT = "quit"
    CLOSE = "close"  # close without QUIT: the server already closed or hung up


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
