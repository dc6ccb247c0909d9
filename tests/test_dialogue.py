"""The session state machine without I/O: tables of sessions, and arbitrary reply sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.results import Failure, Greeting, Phase, Reason, RecipientVerdict
from scanner.smtp.dialogue import ActionKind, Dialogue, RecipientPlan, SessionPlan
from scanner.smtp.reply import Reply

EHLO_NAME = b"scanner.test"
EHLO_WITH_TLS = Reply(250, ("mx.test", "PIPELINING", "STARTTLS", "DSN"))
EHLO_PLAIN = Reply(250, ("mx.test", "PIPELINING"))
OK = Reply(250, ("ok",), "2.0.0")
BYE = Reply(221, ("bye",), "2.0.0")


def play(plan: SessionPlan, events: list) -> tuple[Dialogue, list[tuple[bytes, ...] | str]]:
    """Drive a dialogue: each event is a Reply, "tls" for a finished handshake, or a Failure."""
    dialogue = Dialogue(EHLO_NAME, plan)
    action = dialogue.start()
    performed: list = []
    for event in events:
        if action.kind in (ActionKind.DONE, ActionKind.CLOSE):
            break
        performed.append(action.args or action.kind.value)
        if isinstance(event, Failure):
            action = dialogue.fail(event)
        elif event == "tls":
            action = dialogue.tls_established("TLSv1.3", "TLS_AES_128_GCM_SHA256", [b"der"])
        else:
            action = dialogue.receive(event)
    performed.append(action.kind.value)
    return dialogue, performed


def test_plain_handshake():
    dialogue, performed = play(SessionPlan(starttls=False), [Reply(220, ("hi",)), EHLO_WITH_TLS, BYE])
    assert performed == ["read", (b"EHLO", EHLO_NAME), (b"QUIT",), "done"]
    assert dialogue.greeting is Greeting.EHLO
    assert dialogue.failure is None
    assert dialogue.tls is None
    assert dialogue.quit == BYE


def test_helo_fallback():
    dialogue, performed = play(SessionPlan(), [Reply(220, ("hi",)), Reply(502, ("no",)), OK, BYE])
    assert performed == ["read", (b"EHLO", EHLO_NAME), (b"HELO", EHLO_NAME), (b"QUIT",), "done"]
    assert dialogue.greeting is Greeting.HELO
    assert dialogue.tls.offered is False


def test_banner_reject_sends_quit():
    dialogue, performed = play(SessionPlan(), [Reply(554, ("go away",), "5.7.1"), BYE])
    assert performed == ["read", (b"QUIT",), "done"]
    assert dialogue.failure.reason is Reason.BANNER_REJECTED


def test_banner_421_closes_without_quit():
    dialogue, performed = play(SessionPlan(), [Reply(421, ("busy",))])
    assert performed == ["read", "done"]
    assert dialogue.failure.reason is Reason.BANNER_REJECTED


def test_starttls_then_recipient_unknown_user():
    plan = SessionPlan(recipient=RecipientPlan("nobody@mx.test", catch_all_address="x7@mx.test"))
    events = [Reply(220, ("hi",)), EHLO_WITH_TLS, Reply(220, ("go ahead",)), "tls", EHLO_WITH_TLS, OK,
              Reply(550, ("no such user",), "5.1.1"), Reply(250, ("ok",)), OK, BYE]
    dialogue, performed = play(plan, events)
    assert performed == [
        "read", (b"EHLO", EHLO_NAME), (b"STARTTLS",), "tls", (b"EHLO", EHLO_NAME),
        (b"MAIL", b"FROM:<>"), (b"RCPT", b"TO:<nobody@mx.test>", b"NOTIFY=SUCCESS,FAILURE"),
        (b"RCPT", b"TO:<x7@mx.test>", b"NOTIFY=SUCCESS,FAILURE"), (b"RSET",), (b"QUIT",), "done",
    ]
    assert dialogue.tls.handshake_completed
    assert dialogue.tls.keywords["STARTTLS"] == ""
    assert dialogue.recipient.verdict is RecipientVerdict.UNKNOWN_USER
    assert dialogue.failure is None


def test_starttls_454_goes_on_in_plain_text():
    plan = SessionPlan(recipient=RecipientPlan("postmaster@mx.test"))
    events = [Reply(220, ("hi",)), EHLO_WITH_TLS, Reply(454, ("TLS not available",), "4.7.0"), OK, OK, OK, BYE]
    dialogue, performed = play(plan, events)
    assert (b"MAIL", b"FROM:<>") in performed
    assert dialogue.tls.failure.reason is Reason.STARTTLS_REFUSED
    assert dialogue.recipient.verdict is RecipientVerdict.ACCEPTED
    assert dialogue.failure is None


def test_tls_failure_closes_and_keeps_greeting():
    failure = Failure(Phase.TLS, Reason.TLS_HANDSHAKE_FAILED, "TLS handshake failed: SSL: WRONG_VERSION_NUMBER")
    dialogue, performed = play(SessionPlan(), [Reply(220, ("hi",)), EHLO_WITH_TLS, Reply(220, ("go",)), failure])
    assert performed[-1] == "done"
    assert dialogue.tls.failure is failure
    assert dialogue.failure is None
    assert dialogue.greeting is Greeting.EHLO


def test_quit_timeout_is_not_a_failure():
    timeout = Failure(Phase.QUIT, Reason.REPLY_TIMEOUT, "no reply")
    dialogue, performed = play(SessionPlan(starttls=False), [Reply(220, ("hi",)), EHLO_PLAIN, timeout])
    assert performed[-1] == "done"
    assert dialogue.failure is None
    assert dialogue.quit is None


def test_mail_530_is_auth_required_and_quits():
    plan = SessionPlan(starttls=False, recipient=RecipientPlan("postmaster@mx.test"))
    events = [Reply(220, ("hi",)), EHLO_PLAIN, Reply(530, ("Authentication required",), "5.7.0"), BYE]
    dialogue, performed = play(plan, events)
    assert performed[-2:] == [(b"QUIT",), "done"]
    assert dialogue.recipient.verdict is RecipientVerdict.AUTH_REQUIRED


def test_data_only_with_message_and_accepted():
    plan = SessionPlan(starttls=False, recipient=RecipientPlan("a@mx.test", sender="me@scanner.test", message=b"Subject: t\r\n\r\nhi\r\n"))
    events = [Reply(220, ("hi",)), EHLO_PLAIN, OK, OK, Reply(354, ("go",)), Reply(250, ("queued as 1",)), OK, BYE]
    dialogue, performed = play(plan, events)
    assert (b"DATA",) in performed
    assert "message" in performed
    assert dialogue.recipient.data_end.code == 250


@pytest.mark.parametrize("failure_phase_index", [0, 1])
def test_failure_before_greeting_fails_address(failure_phase_index):
    failure = Failure(Phase.BANNER, Reason.BANNER_TIMEOUT, "no banner")
    events = [failure] if failure_phase_index == 0 else [Reply(220, ("hi",)), Failure(Phase.EHLO, Reason.REPLY_TIMEOUT, "x")]
    dialogue, performed = play(SessionPlan(), events)
    assert performed[-1] == "done"
    assert dialogue.failure is not None
    assert dialogue.greeting is None


# Arbitrary sequences: whatever the server replies, the dialogue ends, never sends DATA
# without a planned message, keeps QUIT last and records reasons from the closed set.

codes = st.sampled_from([220, 221, 250, 251, 252, 354, 421, 450, 451, 452, 454, 500, 501, 502, 530, 550, 551, 553, 554])
enhanced = st.one_of(st.none(), st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.sampled_from([2, 4, 5]), st.integers(0, 7), st.integers(0, 9)))
lines = st.lists(st.sampled_from(["mx.test", "STARTTLS", "DSN", "PIPELINING", "SIZE 100", "8BITMIME", "x"]), min_size=1, max_size=5)
replies = st.builds(lambda code, enh, text: Reply(code, tuple(text), enh if enh is None or enh[0] == str(code)[0] else None), codes, enhanced, lines)
failures = st.builds(Failure, st.sampled_from(list(Phase)), st.sampled_from(list(Reason)), st.just("x"))
events = st.lists(st.one_of(replies, replies, replies, st.just("tls"), failures), max_size=20)
plans = st.builds(
    SessionPlan,
    starttls=st.booleans(),
    recipient=st.one_of(st.none(), st.builds(RecipientPlan, st.just("postmaster@mx.test"),
                                             catch_all_address=st.one_of(st.none(), st.just("r4nd0m@mx.test")),
                                             message=st.one_of(st.none(), st.just(b"hi\r\n")))),
)


@settings(max_examples=500, deadline=None)
@given(plan=plans, sequence=events)
def test_any_reply_sequence(plan, sequence):
    dialogue = Dialogue(EHLO_NAME, plan)
    action = dialogue.start()
    sent = []
    for event in sequence:
        if action.kind in (ActionKind.DONE, ActionKind.CLOSE):
            break
        if event == "tls" and action.kind is not ActionKind.TLS:
            continue  # a handshake result only follows a TLS action
        if action.kind is ActionKind.SEND:
            sent.append(action.args[0])
        if isinstance(event, Failure):
            action = dialogue.fail(event)
        elif event == "tls":
            action = dialogue.tls_established("TLSv1.2", "X", [])
        elif action.kind is ActionKind.TLS:
            action = dialogue.fail(Failure(Phase.TLS, Reason.TLS_HANDSHAKE_FAILED, "x"))
        else:
            action = dialogue.receive(event)

    assert len(sent) <= 12
    if plan.recipient is None or plan.recipient.message is None:
        assert b"DATA" not in sent
    if b"QUIT" in sent:
        assert sent.index(b"QUIT") == len(sent) - 1
    if b"STARTTLS" in sent:
        assert plan.starttls
        assert sent.count(b"STARTTLS") == 1
    if dialogue.greeting is not None:
        assert dialogue.banner.code == 220
    for failure in (dialogue.failure, dialogue.tls.failure if dialogue.tls else None, dialogue.recipient.failure):
        assert failure is None or isinstance(failure.reason, Reason)
    verdict = dialogue.recipient.verdict
    if verdict is RecipientVerdict.UNKNOWN_USER:
        assert dialogue.recipient.rcpt.code >= 500


@settings(max_examples=200, deadline=None)
@given(plan=plans, sequence=st.lists(replies, min_size=30, max_size=30))
def test_dialogue_always_ends(plan, sequence):
    dialogue = Dialogue(EHLO_NAME, plan)
    action = dialogue.start()
    for reply in sequence:
        if action.kind in (ActionKind.DONE, ActionKind.CLOSE):
            break
        if action.kind is ActionKind.TLS:
            action = dialogue.tls_established("TLSv1.3", "X", [])
        else:
            action = dialogue.receive(reply)
    assert action.kind in (ActionKind.DONE, ActionKind.CLOSE)
