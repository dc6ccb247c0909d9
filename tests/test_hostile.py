"""Hostile servers and hostile DNS: each case, its expected record, and a bound on time."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import FAST_TIMEOUTS, by_domain, first_probe, host_per_behaviour, sweep_lab, world
from playback import Playback
from scanner.lab.world import Lab

# (behaviour, status, phase, reason, code, seconds): seconds bounds the domain's elapsed
# time, from the FAST_TIMEOUTS the sweep uses (banner 1 s, reply 1 s, quit 0.5 s).
SMTP_CASES = [
    ("no_banner", "unreachable", "banner", "banner_timeout", None, 1.5),
    ({"behaviour": "drip", "drip_interval": 0.05}, "unreachable", "banner", "banner_timeout", None, 1.5),
    ("long_line", "unreachable", "banner", "reply_too_long", None, 1.0),
    ("endless_multiline", "unreachable", "banner", "reply_too_long", None, 1.0),
    ("garbage_text", "reachable", None, None, None, 1.0),
    ("bare_lf", "reachable", None, None, None, 1.0),
    ("blank_lines", "reachable", None, None, None, 1.0),
    ("huge_ehlo", "unreachable", "ehlo", "reply_too_long", None, 1.0),
    ("reset", "unreachable", "banner", ("connection_reset", "connection_closed"), None, 1.0),
    ("close_immediately", "unreachable", "banner", "connection_closed", None, 1.0),
    ("close_mid_reply", "unreachable", "ehlo", "connection_closed", None, 1.0),
    ("http", "unreachable", "banner", "banner_timeout", None, 1.5),
    ("quit_silent", "reachable", None, None, None, 1.0),
    ("busy_421", "unreachable", "banner", "banner_rejected", 421, 1.0),
    ({"behaviour": "esmtp", "per_reply_delay": 2.0}, "unreachable", "ehlo", "reply_timeout", None, 1.5),
]


def hostile_world(cases) -> dict:
    records, hosts = host_per_behaviour([case[0] for case in cases], "h", "127.0.31")
    return world(records, hosts)


def test_hostile_smtp_servers(run, record_schema):
    async def scenario():
        async with Lab.from_dict(hostile_world(SMTP_CASES)) as lab:
            started = time.monotonic()
            found = await sweep_lab(lab, [f"h{index}.test" for index in range(len(SMTP_CASES))])
            return found, time.monotonic() - started

    found, elapsed = run(scenario())
    assert len(found) == len(SMTP_CASES)
    records = by_domain(found)
    for index, (behaviour, status, phase, reason, code, seconds) in enumerate(SMTP_CASES):
        record = records[f"h{index}.test"]
        record_schema.validate(record)
        probe = first_probe(record)
        assert record["status"] == status, (behaviour, probe)
        assert probe["timings_ms"]["total"] <= seconds * 1000, (behaviour, probe["timings_ms"])
        if status == "reachable":
            assert probe["failure"] is None
            continue
        assert probe["failure"]["phase"] == phase, (behaviour, probe["failure"])
        reasons = reason if isinstance(reason, tuple) else (reason,)
        assert probe["failure"]["reason"] in reasons, (behaviour, probe["failure"])
        if code is not None:
            assert probe["failure"]["code"] == code
    # All hosts are probed in parallel, so the sweep takes about as long as the slowest.
    assert elapsed < 4.0


def test_quit_without_reply_is_bounded(run):
    async def scenario():
        async with Lab.from_dict(hostile_world([("quit_silent",)])) as lab:
            return await sweep_lab(lab, ["h0.test"])

    [record] = run(scenario())
    probe = first_probe(record)
    assert record["status"] == "reachable"
    assert probe["quit"] is None
    assert probe["timings_ms"]["quit"] < FAST_TIMEOUTS["quit"] * 1000 + 300


def test_garbage_text_kept_escaped(run, record_schema):
    async def scenario():
        async with Lab.from_dict(hostile_world([("garbage_text",)])) as lab:
            return await sweep_lab(lab, ["h0.test"])

    [record] = run(scenario())
    record_schema.validate(record)
    text = first_probe(record)["banner"]["text"]
    assert all(line.isprintable() for line in text.split("\n"))
    assert "\\x00" in text
    assert "\\x1b[" in text
    assert "\\xff" in text or "\\xfe" in text
    assert '"' in text


def test_drip_cut_by_host_deadline(run):
    async def scenario():
        async with Lab.from_dict(hostile_world([({"behaviour": "drip", "drip_interval": 0.05},)])) as lab:
            return await sweep_lab(lab, ["h0.test"], timeouts={"banner": 10.0, "host": 0.8})

    [record] = run(scenario())
    failure = first_probe(record)["failure"]
    assert (failure["phase"], failure["reason"]) == ("banner", "host_deadline")
    assert first_probe(record)["timings_ms"]["total"] < 1300


DNS_RECORDS = {
    "sixty.test": {"MX": [f"{index} mx{index:02}.sixty.test." for index in range(60)]},
    **{f"mx{index:02}.sixty.test": {"A": ["127.0.31.200"]} for index in range(60)},
    "self.test": {"MX": ["10 self.test."], "A": ["127.0.31.200"]},
    "loopa.test": {"CNAME": ["loopb.test."]},
    "loopb.test": {"CNAME": ["loopa.test."]},
    "trunc.test": {"MX": [f"{index} mx{index:02}.sixty.test." for index in range(40)]},
    "many.test": {"MX": ["10 mx.many.test."]},
    "mx.many.test": {"A": [f"127.0.31.{200 + index}" for index in range(8)]},
    "empty.test": {"TXT": ["nothing here"]},
    "dangling.test": {"MX": ["10 nowhere.dangling.test."]},
}
DNS_BEHAVIOURS = {"trunc.test": "truncate", "servfail.test": "servfail", "silent.test": "drop", "mismatch.test": "mismatch"}

DNS_CASES = [
    # (domain, status, reason, check)
    ("sixty.test", "reachable", None, lambda r: r["mx_left_out"] == 50 and len(r["exchanges"]) == 10),
    ("self.test", "reachable", None, lambda r: r["exchanges"][0]["name"] == "self.test"),
    ("loopa.test", "dns_error", "cname_loop", None),
    ("trunc.test", "reachable", None, lambda r: len(r["exchanges"]) == 10 and r["mx_left_out"] == 30),
    ("many.test", "reachable", None, lambda r: r["exchanges"][0]["addresses_left_out"] == 4),
    ("empty.test", "no_mail_domain", "no_mx_no_address", None),
    ("dangling.test", "unreachable", "no_address", None),
    ("servfail.test", "dns_error", "servfail", None),
    ("silent.test", "dns_error", "dns_timeout", None),
    ("mismatch.test", "dns_error", "dns_bad_response", None),
]


def test_hostile_dns(run, record_schema):
    hosts = [(f"127.0.31.{200 + index}", "mx.sixty.test", "esmtp") for index in range(8)]

    async def scenario():
        async with Lab.from_dict(world(DNS_RECORDS, hosts, DNS_BEHAVIOURS)) as lab:
            found = await sweep_lab(lab, [case[0] for case in DNS_CASES])
            return found, lab.dns.query_counts

    found, _queries = run(scenario())
    records = by_domain(found)
    assert len(found) == len(DNS_CASES)
    for domain, status, reason, check in DNS_CASES:
        record = records[domain]
        record_schema.validate(record)
        statuses = status if isinstance(status, tuple) else (status,)
        assert record["status"] in statuses, record
        if reason is not None:
            assert record["reason"] == reason, record
        if check is not None:
            assert check(record), record


@pytest.mark.parametrize("max_exchanges,max_addresses", [(1, 1), (3, 2)])
def test_caps_are_configurable(run, max_exchanges, max_addresses):
    hosts = [(f"127.0.31.{200 + index}", "mx.sixty.test", "esmtp") for index in range(8)]

    async def scenario():
        async with Lab.from_dict(world(DNS_RECORDS, hosts)) as lab:
            limits = {"max_exchanges": max_exchanges, "max_addresses": max_addresses}
            return await sweep_lab(lab, ["sixty.test", "many.test"], limits=limits)

    records = by_domain(run(scenario()))
    assert len(records["sixty.test"]["exchanges"]) == max_exchanges
    assert records["sixty.test"]["mx_left_out"] == 60 - max_exchanges
    addresses = records["many.test"]["exchanges"][0]["addresses"]
    assert len(addresses) == max_addresses
    assert records["many.test"]["exchanges"][0]["addresses_left_out"] == 8 - max_addresses


# Arbitrary server bytes, played back by a loopback server through the same code path
# a sweep uses.

LINE = st.one_of(
    st.builds(lambda code, sep, text: code + sep + text + b"\r\n",
              st.sampled_from([b"220", b"250", b"221", b"421", b"451", b"500", b"502", b"554", b"999", b"HTTP"]),
              st.sampled_from([b" ", b"-", b""]),
              st.binary(max_size=30).filter(lambda text: b"\n" not in text)),
    st.binary(max_size=64),
    st.just(b"\n"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=12), cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=6),
       ending=st.sampled_from(["close", "reset", "stall"]))
def test_arbitrary_server_bytes(lines, cuts, ending, record_schema):
    data = b"".join(lines)
    chunks, position = [], 0
    for cut in cuts:
        if position >= len(data):
            break
        chunks.append(data[position:position + cut])
        position += cut
    if position < len(data):
        chunks.append(data[position:])

    async def scenario():
        playback = Playback("127.0.32.1")
        await playback.start()
        records = {"p.test": {"MX": ["10 mx.p.test."]}, "mx.p.test": {"A": ["127.0.32.1"]}}
        lab = Lab.from_dict(world(records, []))
        try:
            async with lab:
                playback.chunks = chunks
                playback.ending = ending
                return await asyncio.wait_for(
                    sweep_lab_on_port(lab, playback.port), timeout=10)
        finally:
            await playback.stop()

    async def sweep_lab_on_port(lab, port):
        return await sweep_lab(lab, ["p.test"], smtp={"port": port},
                               timeouts={"connect": 0.5, "banner": 0.3, "reply": 0.3, "quit": 0.2, "host": 1.0},
                               limits={"max_line_bytes": 256, "max_reply_bytes": 1024})

    found = asyncio.run(scenario())
    assert len(found) == 1
    record = found[0]
    record_schema.validate(record)
    probe = first_probe(record)
    assert probe["timings_ms"]["total"] < 1000 + 250
    assert record["status"] in ("reachable", "unreachable")
    for key in ("banner", "ehlo", "helo", "quit"):
        if probe[key] is not None:
            assert len(probe[key]["text"]) <= 4 * 1024


def test_garbage_reply_spares_other_domains(run):
    # One garbage datagram makes c-ares fail every query on that socket; the others
    # must be asked again rather than recorded as bad responses.
    records = {f"d{index}.test": {"MX": ["10 mx.d.test."]} for index in range(30)}
    records["mx.d.test"] = {"A": ["127.0.31.250"]}
    records["nomail.test"] = {"MX": ["0 ."]}

    async def scenario():
        async with Lab.from_dict(world(records, [("127.0.31.250", "mx.d.test", "esmtp")], {"bad.test": "garbage"})) as lab:
            domains = ["bad.test", "nomail.test", *[f"d{index}.test" for index in range(30)]]
            return await sweep_lab(lab, domains, concurrency=50, dns={"timeout": 1.0, "retries": 2})

    found = by_domain(run(scenario()))
    assert found["bad.test"]["reason"] == "dns_bad_response"
    assert found["nomail.test"]["status"] == "null_mx"
    for index in range(30):
        assert found[f"d{index}.test"]["status"] == "reachable", found[f"d{index}.test"]


def test_unfinished_cname_chain_is_followed(run):
    # The lab stops a chain after eight CNAME links, as resolvers that cap chains do.
    records = {f"c{index}.test": {"CNAME": [f"c{index + 1}.test."]} for index in range(11)}
    records["c11.test"] = {"MX": ["10 mx.c.test."]}
    records["mx.c.test"] = {"A": ["127.0.31.251"]}
    records.update({f"long{index}.test": {"CNAME": [f"long{index + 1}.test."]} for index in range(20)})
    records["long20.test"] = {"MX": ["10 mx.c.test."]}

    async def scenario():
        async with Lab.from_dict(world(records, [("127.0.31.251", "mx.c.test", "esmtp")])) as lab:
            return await sweep_lab(lab, ["c0.test", "long0.test"])

    found = by_domain(run(scenario()))
    assert found["c0.test"]["status"] == "reachable"
    assert (found["long0.test"]["status"], found["long0.test"]["reason"]) == ("dns_error", "cname_loop")
