"""The SMTP session as a state machine without I/O: replies in, next action out.

A ``Dialogue`` is the whole of what a probe session decides. The caller asks for the
first action, performs it (read the banner, send a command, run the TLS handshake,
send the test message, close), and reports the outcome back: a reply, a finished TLS
handshake, or a failure. The dialogue records what it saw and returns the next
action, until ``DONE``. ``scanner.probe.session`` is the thin loop that performs the
actions on a real connection; tests drive a dialogue with plain values.

The order of a session, with the rules from ``scanner.smtp.handshake``:

    banner -> EHLO -> (HELO when EHLO is refused)
           -> STARTTLS -> TLS handshake -> EHLO over TLS      when planned and offered
           -> MAIL FROM -> RCPT TO -> (catch-all RCPT TO)
              -> (DATA and the message, for ``mxscan check --send`` only) -> RSET
                                                             when a recipient is planned
           -> QUIT, or a plain close after a 421 or a broken connection

A failure of the banner or greeting fails the address. A failure during STARTTLS or
the TLS handshake is kept in the TLS part and ends the session, because the connection
is then in an unknown state. A failure during the recipient steps is kept in the
recipient part. A failure of QUIT is never recorded as a failure: the handshake is
already over.
"""

from __future__ import annotations

import dataclasses
import enum

from ..results import Failure, Greeting, Phase, RecipientVerdict
from . import handshake
from .handshake import Step
from .reply import Reply, parse_ehlo_keywords


class ActionKind(str, enum.Enum):
    READ = "read"  # wait for a reply without sending anything (the banner)
    SEND = "send"  # send ``args`` as one command line and wait for its reply
    TLS = "tls"  # run the TLS handshake on the connection
    MESSAGE = "message"  # send the test message after a 354 reply to DATA, then wait
    CLOSE = "close"  # close the connection without QUIT
    DONE = "done"  # nothing left to do; the connection is closed or was never open


class Timeout(str, enum.Enum):
    """The configured timeout that bounds an action."""

    BANNER = "banner"
    REPLY = "reply"
    TLS = "tls"
    QUIT = "quit"


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    phase: Phase
    timeout: Timeout = Timeout.REPLY
    args: tuple[bytes, ...] = ()
    # Key of this action's time in the record's ``timings_ms``.
    timing: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RecipientPlan:
    """The recipient steps: who sends, to whom, and the optional catch-all address.

    ``message`` is the whole test message (headers and body) for ``mxscan check
    --send``; a sweep never sets it, so a sweep never sends DATA.
    """

    rcpt_address: str
    sender: str = ""
    catch_all_address: str | None = None
    message: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionPlan:
    """What one session does beyond banner, EHLO and QUIT.

    ``tls_hostname`` is sent as SNI. ``certificate_facts`` requests the certificate's
    facts and chain check after the handshake. Recipient sessions leave them to the
    address's probe.
    """

    starttls: bool = True
    tls_hostname: str | None = None
    certificate_facts: bool = True
    recipient: RecipientPlan | None = None


@dataclasses.dataclass
class TlsState:
    offered: bool
    attempted: bool = False
    starttls: Reply | None = None
    accepted: bool = False
    handshake_completed: bool = False
    version: str | None = None
    cipher: str | None = None
    chain: list[bytes] = dataclasses.field(default_factory=list)
    ehlo: Reply | None = None
    keywords: dict[str, str] | None = None
    failure: Failure | None = None


@dataclasses.dataclass
class RecipientState:
    mail_from: Reply | None = None
    rcpt: Reply | None = None
    catch_all_rcpt: Reply | None = None
    rset: Reply | None = None
    data: Reply | None = None
    data_end: Reply | None = None
    verdict: RecipientVerdict | None = None
    failure: Failure | None = None


_DONE = Action(ActionKind.DONE, Phase.QUIT)


class Dialogue:
    """One session's decisions and what it has seen; see the module docstring."""

    def __init__(self, ehlo_name: bytes, plan: SessionPlan) -> None:
        self.ehlo_name = ehlo_name
        self.plan = plan
        self.banner: Reply | None = None
        self.ehlo: Reply | None = None
        self.helo: Reply | None = None
        self.quit: Reply | None = None
        self.greeting: Greeting | None = None
        self.failure: Failure | None = None
        self.tls: TlsState | None = None
        self.recipient = RecipientState()
        self._current = Action(ActionKind.READ, Phase.BANNER, Timeout.BANNER, timing="banner")
        self._after: str = "banner"

    # Facts the record and the next steps need

    @property
    def keywords(self) -> dict[str, str] | None:
        if self.greeting is Greeting.EHLO and self.ehlo is not None:
            return parse_ehlo_keywords(self.ehlo)
        return None

    @property
    def over_tls(self) -> bool:
        return self.tls is not None and self.tls.handshake_completed

    @property
    def current_keywords(self) -> dict[str, str] | None:
        """The keywords that apply now: those sent over TLS once TLS is up (RFC 3207 section 4.2)."""
        if self.over_tls:
            return self.tls.keywords
        return self.keywords

    @property
    def done(self) -> bool:
        return self._current.kind is ActionKind.DONE

    # The machine

    def start(self) -> Action:
        return self._current

    def receive(self, reply: Reply) -> Action:
        """Take the reply to the current action and return the next action."""
        handler = getattr(self, f"_after_{self._after}")
        return self._go(*handler(reply))

    def tls_established(self, version: str | None, cipher: str | None, chain: list[bytes]) -> Action:
        """Record a completed TLS handshake and return the next action: EHLO over TLS."""
        tls = self.tls
        tls.handshake_completed = True
        tls.version = version
        tls.cipher = cipher
        tls.chain = list(chain) if self.plan.certificate_facts else []
        return self._go(Action(ActionKind.SEND, Phase.EHLO, args=(b"EHLO", self.ehlo_name), timing="ehlo_tls"), "tls_ehlo")

    def fail(self, failure: Failure) -> Action:
        """Record that the current action failed (a timeout, a reset, bad bytes) and return the next action."""
        if self._current.kind is ActionKind.DONE:
            return _DONE
        if self._after == "quit":
            # QUIT that gets no reply changes nothing: the handshake is already over.
            return self._go(_DONE, "quit")
        if self._after in ("starttls", "tls", "tls_ehlo"):
            self.tls.failure = failure
        elif self._after in ("mail", "rcpt", "catch_all", "data", "message", "rset"):
            self.recipient.failure = failure
        elif self.failure is None:
            self.failure = failure
        return self._go(_DONE, "done")

    def _go(self, action: Action, after: str) -> Action:
        self._current = action
        self._after = after
        return action

    def _next(self, step: Step) -> tuple[Action, str]:
        """Turn a handshake step into the next action."""
        if step is Step.QUIT:
            return Action(ActionKind.SEND, Phase.QUIT, Timeout.QUIT, (b"QUIT",), timing="quit"), "quit"
        if step is Step.CLOSE:
            return _DONE, "done"
        raise ValueError(f"no action for step {step}")

    def _send(self, phase: Phase, after: str, *args: bytes, timing: str | None = None) -> tuple[Action, str]:
        return Action(ActionKind.SEND, phase, args=args, timing=timing or phase.value), after

    # One handler per reply the dialogue waits for

    def _after_banner(self, reply: Reply) -> tuple[Action, str]:
        self.banner = reply
        decision = handshake.after_banner(reply)
        if decision.step is Step.EHLO:
            return self._send(Phase.EHLO, "ehlo", b"EHLO", self.ehlo_name)
        self.failure = decision.failure
        return self._next(decision.step)

    def _after_ehlo(self, reply: Reply) -> tuple[Action, str]:
        self.ehlo = reply
        decision = handshake.after_ehlo(reply)
        if decision.step is Step.HELO:
            return self._send(Phase.HELO, "helo", b"HELO", self.ehlo_name)
        return self._greeted(decision)

    def _after_helo(self, reply: Reply) -> tuple[Action, str]:
        self.helo = reply
        return self._greeted(handshake.after_helo(reply))

    def _greeted(self, decision: handshake.Decision) -> tuple[Action, str]:
        self.failure = decision.failure
        self.greeting = decision.greeting
        if self.greeting is None:
            return self._next(decision.step)
        if self.plan.starttls:
            self.tls = TlsState(offered=handshake.wants_starttls(self.keywords, True))
            if self.tls.offered:
                self.tls.attempted = True
                return self._send(Phase.STARTTLS, "starttls", b"STARTTLS")
        return self._recipient_or_quit()

    def _after_starttls(self, reply: Reply) -> tuple[Action, str]:
        self.tls.starttls = reply
        decision = handshake.after_starttls(reply)
        if decision.step is Step.TLS:
            self.tls.accepted = True
            return Action(ActionKind.TLS, Phase.TLS, Timeout.TLS, timing="tls"), "tls"
        self.tls.failure = decision.failure
        if decision.step is Step.CONTINUE:
            return self._recipient_or_quit()
        return self._next(decision.step)

    def _after_tls_ehlo(self, reply: Reply) -> tuple[Action, str]:
        self.tls.ehlo = reply
        decision = handshake.after_tls_ehlo(reply)
        if decision.greeting is Greeting.EHLO:
            self.tls.keywords = parse_ehlo_keywords(reply)
        self.tls.failure = decision.failure
        if decision.step is Step.CONTINUE:
            return self._recipient_or_quit()
        return self._next(decision.step)

    def _recipient_or_quit(self) -> tuple[Action, str]:
        plan = self.plan.recipient
        if plan is None:
            return self._next(Step.QUIT)
        return self._send(Phase.MAIL, "mail", b"MAIL", b"FROM:<" + plan.sender.encode() + b">")

    def _after_mail(self, reply: Reply) -> tuple[Action, str]:
        state = self.recipient
        state.mail_from = reply
        state.verdict = handshake.verdict_after_mail(reply)
        if state.verdict is not None:
            return self._next(Step.CLOSE if handshake.closes_session(reply) else Step.QUIT)
        return self._rcpt(self.plan.recipient.rcpt_address, "rcpt", "rcpt")

    def _rcpt(self, address: str, after: str, timing: str) -> tuple[Action, str]:
        parameters = handshake.rcpt_parameters(self.current_keywords)
        return self._send(Phase.RCPT, after, b"RCPT", b"TO:<" + address.encode() + b">", *parameters, timing=timing)

    def _after_rcpt(self, reply: Reply) -> tuple[Action, str]:
        state = self.recipient
        state.rcpt = reply
        state.verdict = handshake.verdict_after_rcpt(reply)
        if handshake.closes_session(reply):
            return self._next(Step.CLOSE)
        if self.plan.recipient.catch_all_address is not None:
            return self._rcpt(self.plan.recipient.catch_all_address, "catch_all", "rcpt_catch_all")
        return self._data_or_rset()

    def _after_catch_all(self, reply: Reply) -> tuple[Action, str]:
        self.recipient.catch_all_rcpt = reply
        if handshake.closes_session(reply):
            return self._next(Step.CLOSE)
        return self._data_or_rset()

    def _data_or_rset(self) -> tuple[Action, str]:
        if self.plan.recipient.message is not None and self.recipient.verdict is RecipientVerdict.ACCEPTED:
            return self._send(Phase.DATA, "data", b"DATA")
        return self._send(Phase.RSET, "rset", b"RSET")

    def _after_data(self, reply: Reply) -> tuple[Action, str]:
        self.recipient.data = reply
        if reply.code == 354:
            return Action(ActionKind.MESSAGE, Phase.DATA, timing="data_end"), "message"
        if handshake.closes_session(reply):
            return self._next(Step.CLOSE)
        return self._send(Phase.RSET, "rset", b"RSET")

    def _after_message(self, reply: Reply) -> tuple[Action, str]:
        self.recipient.data_end = reply
        if handshake.closes_session(reply):
            return self._next(Step.CLOSE)
        return self._send(Phase.RSET, "rset", b"RSET")

    def _after_rset(self, reply: Reply) -> tuple[Action, str]:
        self.recipient.rset = reply
        return self._next(Step.CLOSE if handshake.closes_session(reply) else Step.QUIT)

    def _after_quit(self, reply: Reply) -> tuple[Action, str]:
        self.quit = reply
        return _DONE, "done"

    def _after_done(self, reply: Reply) -> tuple[Action, str]:
        raise RuntimeError("the dialogue is over; no reply is expected")

    def _after_tls(self, reply: Reply) -> tuple[Action, str]:
        raise RuntimeError("the TLS handshake ends with tls_established or fail, not with a reply")
