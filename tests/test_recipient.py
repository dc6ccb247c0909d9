"""The recipient probe: each verdict against the lab, the limits, and the verdict table."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit import by_domain, sweep_lab, world
from scanner.config import config_from_dict
from scanner.errors import ConfigError
from scanner.lab.world import Lab
from scanner.probe.limits import AddressLimiter
from scanner.results import RecipientVerdict
from scanner.smtp import handshake
from scanner.smtp.reply import Reply

pytestmark = pytest.mark.timeout(60)

SUBNET = "127.0.41"
NO_DSN = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]

CASES = [
    # (label, lab behaviour, verdict, MAIL code, RCPT code, RCPT enhanced code)
    ("accepted", "esmtp", "accepted", 250, 250, "2.1.5"),
    ("unknown", {"behaviour": "esmtp", "recipients": {"*": "unknown"}}, "unknown_user", 250, 550, "5.1.1"),
    ("sender", "sender_reject", "sender_rejected", 550, None, None),
    ("auth", "auth_required", "auth_required", 530, None, None),
    ("greylist", "greylist", "temporary", 250, 451, "4.7.1"),
    ("ratelimit", {"behaviour": "esmtp", "recipients": {"*": "rate_limit"}}, "rate_limited", 250, 450, "4.5.3"),
    ("closing", {"behaviour": "esmtp", "recipients": {"*": "rate_limit"}, "rate_limit_code": 421}, "rate_limited", 250, 421, "4.7.0"),
    ("policy", {"behaviour": "esmtp", "recipients": {"*": "policy"}}, "policy_block", 250, 554, "5.7.1"),
    ("nodsn", {"behaviour": "esmtp", "extensions": NO_DSN}, "accepted", 250, 250, "2.1.5"),
    ("busy", "busy_421", None, None, None, None),
]


def recipient_world(cases):
    records, hosts = {}, []
    for index, (label, behaviour, *_rest) in enumerate(cases):
        address = f"{SUBNET}.{index + 1}"
        records[f"{label}.rcpt.test"] = {"MX": [f"10 mx.{label}.rcpt.test."]}
        records[f"mx.{label}.rcpt.test"] = {"A": [address]}
        hosts.append((address, f"mx.{label}.rcpt.test", behaviour))
    return world(records, hosts)


def commands_of(lab: Lab, label: str) -> list[list[str]]:
    index = [case[0] for case in CASES].index(label)
    return [session.commands for session in lab.host(f"{SUBNET}.{index + 1}").sessions]


def test_recipient_verdicts(run, record_schema):
    async def scenario():
        async with Lab.from_dict(recipient_world(CASES)) as lab:
            domains = [f"{case[0]}.rcpt.test" for case in CASES]
            records = await sweep_lab(lab, domains, recipient={"enabled": True, "per_address_rate": 0})
            commands = {case[0]: commands_of(lab, case[0]) for case in CASES}
            return by_domain(records), commands, sum(host.data_commands for host in lab.hosts)

    found, commands, data_commands = run(scenario())
    assert data_commands == 0
    for label, _behaviour, verdict, mail_code, rcpt_code, rcpt_enhanced in CASES:
        record = found[f"{label}.rcpt.test"]
        record_schema.validate(record)
        address = record["exchanges"][0]["addresses"][0]
        if verdict is None:
            # The address probe failed, so no recipient session was opened.
            assert address["recipient"] is None
            assert len(commands[label]) == 1
            continue

        recipient = address["recipient"]
        assert recipient["verdict"] == verdict, (label, recipient)
        assert recipient["rcpt_address"] == f"postmaster@{label}.rcpt.test"
        assert recipient["sender"] == ""
        assert recipient["mail_from"]["code"] == mail_code
        if rcpt_code is None:
            assert recipient["rcpt"] is None
        else:
            assert recipient["rcpt"]["code"] == rcpt_code
            assert recipient["rcpt"]["enhanced"] == rcpt_enhanced
        assert recipient["catch_all"] is None
        assert recipient["catch_all_rcpt"] is None
        assert recipient["data"] is None
        assert recipient["transcript"] is None

        # One session for the address probe, one for the recipient probe.
        probe_session, recipient_session = commands[label]
        assert not any(command.startswith(("MAIL", "RCPT")) for command in probe_session)
        assert recipient_session[1] == "MAIL FROM:<>"
        assert not any(command.upper().startswith("DATA") for command in recipient_session)

    accepted = commands["accepted"][1]
    assert accepted == ["EHLO scanner.test", "MAIL FROM:<>", "RCPT TO:<postmaster@accepted.rcpt.test> NOTIFY=SUCCESS,FAILURE", "RSET", "QUIT"]
    assert found["accepted.rcpt.test"]["exchanges"][0]["addresses"][0]["recipient"]["rset"]["code"] == 250
    # NOTIFY only when the server advertises DSN.
    assert commands["nodsn"][1][2] == "RCPT TO:<postmaster@nodsn.rcpt.test>"
    # After 421 the server closes, so neither RSET nor QUIT is sent.
    assert commands["closing"][1][-1].startswith("RCPT")
    # A refused sender ends the transaction before RCPT.
    assert commands["sender"][1] == ["EHLO scanner.test", "MAIL FROM:<>", "QUIT"]


def test_recipient_catch_all_and_sender(run, record_schema):
    cases = [("catchall", "catch_all"), ("strict", "esmtp")]
    settings = {
        "enabled": True,
        "catch_all": True,
        "sender": "probe@scanner.test",
        "rcpt_template": "abuse@{domain}",
        "per_address_rate": 0,
    }

    async def scenario():
        description = recipient_world([(label, behaviour) for label, behaviour in cases])
        # The lab accepts postmaster only, so abuse@ is unknown unless the host takes all.
        async with Lab.from_dict(description) as lab:
            records = await sweep_lab(lab, ["catchall.rcpt.test", "strict.rcpt.test"], recipient=settings, transcript={"enabled": True})
            return by_domain(records)

    found = run(scenario())
    catchall = found["catchall.rcpt.test"]["exchanges"][0]["addresses"][0]["recipient"]
    strict = found["strict.rcpt.test"]["exchanges"][0]["addresses"][0]["recipient"]
    for record in found.values():
        record_schema.validate(record)

    assert catchall["verdict"] == "accepted"
    assert catchall["catch_all"] is True
    assert catchall["catch_all_rcpt"]["code"] == 250
    assert catchall["catch_all_address"].endswith("@catchall.rcpt.test")
    assert catchall["rcpt_address"] == "abuse@catchall.rcpt.test"
    assert catchall["sender"] == "probe@scanner.test"

    assert strict["verdict"] == "unknown_user"
    assert strict["catch_all"] is False
    assert strict["catch_all_rcpt"]["enhanced"] == "5.1.1"

    lines = [(line["dir"], line["line"]) for line in strict["transcript"]]
    assert ("C", "MAIL FROM:<probe@scanner.test>") in lines
    assert ("S", "550 5.1.1 User unknown") in lines
    assert lines[-1] == ("S", "221 2.0.0 Bye")
    assert all(line["t_ms"] >= 0 for line in strict["transcript"])
    times = [line["t_ms"] for line in strict["transcript"]]
    assert times == sorted(times)


def test_recipient_rate_limit_per_address(run):
    # Six domains share one MX address; the probe allows 20 sessions a second there.
    domains = [f"d{index}.shared.rcpt.test" for index in range(6)]
    records = {domain: {"MX": ["10 mx.shared.rcpt.test."]} for domain in domains}
    records["mx.shared.rcpt.test"] = {"A": [f"{SUBNET}.100"]}

    async def scenario():
        async with Lab.from_dict(world(records, [(f"{SUBNET}.100", "mx.shared.rcpt.test", "esmtp")])) as lab:
            found = await sweep_lab(lab, domains, concurrency=6, recipient={"enabled": True, "per_address_rate": 20})
            return found, lab.host(f"{SUBNET}.100").sessions

    found, sessions = run(scenario())
    assert len(found) == 6
    verdicts = [record["exchanges"][0]["addresses"][0]["recipient"]["verdict"] for record in found]
    assert verdicts == ["accepted"] * 6
    # One address probe, then one recipient session per domain.
    assert len(sessions) == 7
    starts = sorted(session.started for session in sessions[1:])
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    # 20 per second is one start every 50 ms; allow for timer slack.
    assert min(gaps) >= 0.04, gaps


def test_recipient_off_by_default(run):
    async def scenario():
        async with Lab.from_dict(recipient_world(CASES[:1])) as lab:
            records = await sweep_lab(lab, ["accepted.rcpt.test"])
            return records, lab.host(f"{SUBNET}.1").sessions

    [record], sessions = run(scenario())
    assert record["exchanges"][0]["addresses"][0]["recipient"] is None
    assert len(sessions) == 1
    assert not any(command.startswith("MAIL") for command in sessions[0].commands)


# The verdict table, without sockets


def reply(code: int, enhanced: str | None = None) -> Reply:
    return Reply(code=code, lines=("text that must not matter",), enhanced=enhanced)


@pytest.mark.parametrize(
    ("code", "enhanced", "verdict"),
    [
        (250, "2.1.5", RecipientVerdict.ACCEPTED),
        (251, None, RecipientVerdict.ACCEPTED),
        (252, "2.1.5", RecipientVerdict.ACCEPTED),
        (550, "5.1.1", RecipientVerdict.UNKNOWN_USER),
        (550, None, RecipientVerdict.REJECTED),
        (553, "5.1.3", RecipientVerdict.REJECTED),
        (550, "5.7.1", RecipientVerdict.POLICY_BLOCK),
        (554, "5.7.1", RecipientVerdict.POLICY_BLOCK),
        (530, "5.7.0", RecipientVerdict.AUTH_REQUIRED),
        (530, "5.7.1", RecipientVerdict.AUTH_REQUIRED),
        (450, "4.5.3", RecipientVerdict.RATE_LIMITED),
        (452, "4.5.3", RecipientVerdict.RATE_LIMITED),
        (421, "4.7.0", RecipientVerdict.RATE_LIMITED),
        (421, None, RecipientVerdict.RATE_LIMITED),
        (451, "4.7.1", RecipientVerdict.TEMPORARY),
        (450, "4.1.1", RecipientVerdict.TEMPORARY),
        (450, None, RecipientVerdict.TEMPORARY),
    ],
)
def test_rcpt_verdict_table(code, enhanced, verdict):
    assert handshake.verdict_after_rcpt(reply(code, enhanced)) is verdict


@pytest.mark.parametrize(
    ("code", "enhanced", "verdict"),
    [
        (250, "2.1.0", None),
        (550, "5.1.7", RecipientVerdict.SENDER_REJECTED),
        (553, "5.1.8", RecipientVerdict.SENDER_REJECTED),
        (550, None, RecipientVerdict.SENDER_REJECTED),
        (530, "5.7.1", RecipientVerdict.AUTH_REQUIRED),
        (554, "5.7.1", RecipientVerdict.POLICY_BLOCK),
        (421, "4.7.0", RecipientVerdict.RATE_LIMITED),
        (451, "4.3.0", RecipientVerdict.TEMPORARY),
    ],
)
def test_mail_verdict_table(code, enhanced, verdict):
    assert handshake.verdict_after_mail(reply(code, enhanced)) is verdict


@given(code=st.integers(400, 499), subject=st.integers(0, 9), detail=st.integers(0, 999), with_enhanced=st.booleans())
def test_temporary_never_unknown_user(code, subject, detail, with_enhanced):
    enhanced = f"4.{subject}.{detail}" if with_enhanced else None
    verdict = handshake.verdict_after_rcpt(reply(code, enhanced))
    assert verdict in (RecipientVerdict.TEMPORARY, RecipientVerdict.RATE_LIMITED)


def test_catch_all_reading():
    assert handshake.catch_all_of(reply(250)) is True
    assert handshake.catch_all_of(reply(550, "5.1.1")) is False
    assert handshake.catch_all_of(reply(451, "4.7.1")) is None


def test_rcpt_parameters_need_dsn():
    assert handshake.rcpt_parameters({"DSN": ""}) == (b"NOTIFY=SUCCESS,FAILURE",)
    assert handshake.rcpt_parameters({"PIPELINING": ""}) == ()
    assert handshake.rcpt_parameters(None) == ()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rcpt_template": "postmaster@example.test"}, "must be local@{domain}"),
        ({"rcpt_template": "{domain}"}, "must be local@{domain}"),
        ({"rcpt_template": "post master@{domain}"}, "must not contain spaces"),
        ({"sender": "probe"}, "is not an address"),
        ({"sender": "a@b\r\nDATA"}, "control characters"),
        ({"per_address_sessions": 0}, "below the minimum"),
        ({"per_address_rate": -1}, "below the minimum"),
    ],
)
def test_recipient_settings_validated(settings, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        config_from_dict({"domains": [], "recipient": settings})


def test_address_limiter_spaces_starts():
    limiter = AddressLimiter(sessions=2, rate=50)
    starts: list[float] = []
    open_now = 0
    most_open = 0

    async def session():
        nonlocal open_now, most_open
        async with limiter.slot("127.0.0.1"):
            starts.append(time.monotonic())
            open_now += 1
            most_open = max(most_open, open_now)
            await asyncio.sleep(0.05)
            open_now -= 1

    async def scenario():
        await asyncio.gather(*(session() for _ in range(5)))
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert most_open <= 2
    assert min(gaps) >= 0.015, gaps
    assert len(limiter) == 0


def test_address_limiter_without_rate():
    limiter = AddressLimiter(sessions=1, rate=0)

    async def scenario():
        async with limiter.slot("127.0.0.1"):
            pass
        return len(limiter)

    assert asyncio.run(scenario()) == 0
