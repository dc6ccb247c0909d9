"""Decision logic without I/O: handshake steps, MX plans, domain status, name normalisation."""

from __future__ import annotations

import pytest

from scanner.dns.mx import plan_from_mx
from scanner.inputs import InvalidName, normalise_name
from scanner.outcome import domain_status
from scanner.results import (
    AddressResult,
    ExchangeResult,
    Failure,
    Greeting,
    MxSource,
    Phase,
    ProbeResult,
    Reason,
    Refusal,
    Status,
)
from scanner.smtp.handshake import Step, after_banner, after_ehlo, after_helo, refusal_of
from scanner.smtp.reply import Reply


@pytest.mark.parametrize("code,enhanced,step,reason,refusal", [
    (220, None, Step.EHLO, None, None),
    (554, None, Step.QUIT, Reason.BANNER_REJECTED, Refusal.PERMANENT),
    (554, "5.7.1", Step.QUIT, Reason.BANNER_REJECTED, Refusal.PERMANENT),
    (450, None, Step.QUIT, Reason.BANNER_REJECTED, Refusal.TEMPORARY),
    (421, "4.3.2", Step.CLOSE, Reason.BANNER_REJECTED, Refusal.TEMPORARY),
    (250, None, Step.QUIT, Reason.MALFORMED_REPLY, None),
])
def test_after_banner(code, enhanced, step, reason, refusal):
    decision = after_banner(Reply(code, ("text",), enhanced))
    assert decision.step is step
    if reason is None:
        assert decision.failure is None
    else:
        assert decision.failure.reason is reason
        assert decision.failure.refusal is refusal
        assert decision.failure.code == code
        assert decision.failure.phase is Phase.BANNER


@pytest.mark.parametrize("code,step,greeting,reason", [
    (250, Step.QUIT, Greeting.EHLO, None),
    (500, Step.HELO, None, None),
    (502, Step.HELO, None, None),
    (501, Step.HELO, None, None),
    (451, Step.HELO, None, None),
    (421, Step.CLOSE, None, Reason.SERVICE_CLOSING),
])
def test_after_ehlo(code, step, greeting, reason):
    decision = after_ehlo(Reply(code, ("x",)))
    assert decision.step is step
    assert decision.greeting is greeting
    assert (decision.failure.reason if decision.failure else None) is reason


@pytest.mark.parametrize("code,step,greeting,reason", [
    (250, Step.QUIT, Greeting.HELO, None),
    (501, Step.QUIT, None, Reason.EHLO_REJECTED),
    (550, Step.QUIT, None, Reason.EHLO_REJECTED),
    (421, Step.CLOSE, None, Reason.SERVICE_CLOSING),
])
def test_after_helo(code, step, greeting, reason):
    decision = after_helo(Reply(code, ("x",)))
    assert decision.step is step
    assert decision.greeting is greeting
    assert (decision.failure.reason if decision.failure else None) is reason


def test_refusal_prefers_enhanced_code():
    assert refusal_of(Reply(550, ("x",), "5.7.1")) is Refusal.PERMANENT
    assert refusal_of(Reply(452, ("x",), "4.2.2")) is Refusal.TEMPORARY
    assert refusal_of(Reply(250, ("x",))) is None


@pytest.mark.parametrize("records,source,names,left_out", [
    ([], None, None, 0),
    ([(0, ".")], MxSource.NULL, (), 0),
    ([(0, "")], MxSource.NULL, (), 0),
    ([(20, "b.test."), (10, "a.test.")], MxSource.MX, ("a.test", "b.test"), 0),
    ([(10, "b.test"), (10, "a.test")], MxSource.MX, ("a.test", "b.test"), 0),
    ([(10, "A.test"), (20, "a.test")], MxSource.MX, ("a.test",), 0),
    ([(0, "."), (10, "a.test")], MxSource.MX, ("a.test",), 0),
    ([(i, f"mx{i:02}.test") for i in range(60)], MxSource.MX, tuple(f"mx{i:02}.test" for i in range(10)), 50),
])
def test_plan_from_mx(records, source, names, left_out):
    plan = plan_from_mx(records, max_exchanges=10)
    if source is None:
        assert plan is None
        return
    assert plan.source is source
    assert tuple(exchange.name for exchange in plan.exchanges) == names
    assert plan.left_out == left_out


def test_plan_marks_ip_literal():
    plan = plan_from_mx([(10, "192.0.2.1."), (20, "[2001:db8::1]")], max_exchanges=10)
    assert [exchange.ip_literal for exchange in plan.exchanges] == [True, True]


def probe(completed: bool, reason: Reason | None = None) -> ProbeResult:
    failure = Failure(Phase.CONNECT, reason, "x") if reason else None
    return ProbeResult(address="127.0.0.1", port=25, connected=completed, completed=completed, failure=failure)


def test_status_reachable_when_any_address_completes():
    exchanges = (
        ExchangeResult("a.test", 10, (AddressResult("127.0.0.1", "ipv4", probe=probe(False, Reason.CONNECTION_REFUSED)),)),
        ExchangeResult("b.test", 20, (AddressResult("127.0.0.2", "ipv4", probe=probe(True)),)),
    )
    assert domain_status(exchanges) == (Status.REACHABLE, None)


def test_status_takes_first_failure_by_preference():
    exchanges = (
        ExchangeResult("a.test", 10, (AddressResult("127.0.0.1", "ipv4", probe=probe(False, Reason.CONNECT_TIMEOUT)),)),
        ExchangeResult("b.test", 20, (AddressResult("127.0.0.2", "ipv4", probe=probe(False, Reason.CONNECTION_REFUSED)),)),
    )
    status, failure = domain_status(exchanges)
    assert status is Status.UNREACHABLE
    assert failure.reason is Reason.CONNECT_TIMEOUT


def test_status_dns_error_when_exchanges_fail_lookup():
    failure = Failure(Phase.DNS, Reason.SERVFAIL, "x")
    status, reported = domain_status((ExchangeResult("a.test", 10, failure=failure),))
    assert status is Status.DNS_ERROR
    assert reported is failure


def test_status_not_probed_when_all_skipped():
    skip = Failure(Phase.POLICY, Reason.IPV6_DISABLED, "off")
    status, reported = domain_status((ExchangeResult("a.test", 10, (AddressResult("::1", "ipv6", skipped=skip),)),))
    assert status is Status.NOT_PROBED
    assert reported is skip


@pytest.mark.parametrize("given,expected", [
    ("Example.TEST", "example.test"),
    ("  example.test.  ", "example.test"),
    ("B\u00fccher.test", "xn--bcher-kva.test"),
    ("xn--bcher-kva.test", "xn--bcher-kva.test"),
    ("a-b.c-d.test", "a-b.c-d.test"),
])
def test_normalise_name(given, expected):
    assert normalise_name(given) == expected


@pytest.mark.parametrize("given,reason", [
    ("", Reason.EMPTY_NAME),
    ("   ", Reason.EMPTY_NAME),
    (".", Reason.EMPTY_NAME),
    ("a" * 64 + ".test", Reason.INVALID_LABEL),
    (".".join(["abcdefghij"] * 25) + ".test", Reason.NAME_TOO_LONG),
    ("bad..test", Reason.INVALID_LABEL),
    ("-bad.test", Reason.INVALID_LABEL),
    ("under_score.test", Reason.INVALID_LABEL),
    ("has space.test", Reason.INVALID_LABEL),
    ("localhost", Reason.INVALID_LABEL),
    ("192.0.2.1", Reason.IP_ADDRESS_GIVEN),
    ("[2001:db8::1]", Reason.IP_ADDRESS_GIVEN),
    ("example.123", Reason.INVALID_LABEL),
    ("xn--zz.test", Reason.INVALID_IDN),
])
def test_normalise_name_rejects(given, reason):
    with pytest.raises(InvalidName) as caught:
        normalise_name(given)
    assert caught.value.reason is reason


def test_domains_file_bom_and_crlf(tmp_path):
    from scanner.inputs import read_domains_file

    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfgood.test\r\nother.test\r\n")
    entries = list(read_domains_file(path))
    assert [entry.given for entry in entries] == ["good.test", "other.test"]
