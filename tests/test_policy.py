"""Address policy: special-purpose ranges skipped by default, allow and exclusion lists."""

from __future__ import annotations

import pytest

from labkit import sweep_lab, world
from scanner.config import config_from_dict
from scanner.errors import ConfigError
from scanner.lab.world import Lab
from scanner.policy import AddressPolicy, parse_networks
from scanner.results import Reason


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.1.1", "100.64.0.1",
    "192.0.2.1", "198.51.100.1", "203.0.113.1", "198.18.0.1", "240.0.0.1", "0.0.0.0",
    "255.255.255.255", "224.0.0.1", "239.1.1.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12::1", "2001:db8::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",
])
def test_special_purpose_skipped(address):
    failure = AddressPolicy().check(address)
    assert failure is not None
    assert failure.reason is Reason.ADDRESS_NOT_GLOBAL
    assert address in failure.message


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.4.4"])
def test_global_unicast_allowed(address):
    assert AddressPolicy().check(address) is None


def test_exclusion_wins_over_allow():
    policy = AddressPolicy(
        allow_private=True,
        allow=parse_networks(["10.0.0.0/8"], "allow"),
        exclude=parse_networks(["10.1.0.0/16", "2001:db8::/32"], "exclude"),
    )
    assert policy.check("10.1.2.3").reason is Reason.ADDRESS_EXCLUDED
    assert policy.check("2001:db8::5").reason is Reason.ADDRESS_EXCLUDED
    assert policy.check("10.2.0.1") is None


def test_allow_list_opens_one_range():
    policy = AddressPolicy(allow=parse_networks(["127.0.26.0/24"], "allow"))
    assert policy.check("127.0.26.9") is None
    assert policy.check("127.0.27.9").reason is Reason.ADDRESS_NOT_GLOBAL


def test_bad_range_names_setting():
    with pytest.raises(ConfigError, match=r"policy.exclude\[1\].*not-a-range"):
        config_from_dict({"domains": ["a.test"], "policy": {"exclude": ["10.0.0.0/8", "not-a-range"]}})


def test_exclude_file(tmp_path):
    (tmp_path / "optout.txt").write_text("# opt-out requests\n127.0.26.0/24  # lab\n\n")
    (tmp_path / "scan.yaml").write_text("domains: [a.test]\npolicy: {allow_private: true, exclude_file: optout.txt}\n")
    from scanner.config import load_config
    from scanner.policy import build_policy

    config = load_config(tmp_path / "scan.yaml")
    policy = build_policy(config.settings.policy)
    assert policy.check("127.0.26.1").reason is Reason.ADDRESS_EXCLUDED


def test_default_sweep_never_connects_to_private(run, record_schema):
    records = {
        "loop.test": {"MX": ["10 mx.loop.test."]}, "mx.loop.test": {"A": ["127.0.0.1"]},
        "ten.test": {"MX": ["10 mx.ten.test."]}, "mx.ten.test": {"A": ["10.0.0.1"]},
    }

    async def scenario():
        async with Lab.from_dict(world(records, [("127.0.0.1", "mx.loop.test", "esmtp")])) as lab:
            found = await sweep_lab(lab, ["loop.test", "ten.test"], policy={"allow_private": False})
            return found, lab.host("127.0.0.1").connections

    found, connections = run(scenario())
    assert connections == 0
    for record in found:
        record_schema.validate(record)
        assert record["status"] == "not_probed"
        assert record["reason"] == "address_not_global"
        address = record["exchanges"][0]["addresses"][0]
        assert address["probe"] is None
        assert address["skipped"]["phase"] == "policy"


@pytest.mark.parametrize("address", [
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",  # local-use NAT64 prefix
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "::a00:1",  # IPv4-compatible 10.0.0.1
    "::ffff:0:a00:1",  # SIIT 10.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo server 65.54.227.120, client 10.0.0.1
])
def test_embedded_private_ipv4_skipped(address):
    failure = AddressPolicy().check(address)
    assert failure is not None
    assert failure.reason is Reason.ADDRESS_NOT_GLOBAL


@pytest.mark.parametrize("address", ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "::808:808"])
def test_exclusion_covers_embedded_ipv4(address):
    policy = AddressPolicy(exclude=parse_networks(["8.8.8.0/24"], "exclude"))
    assert policy.check(address).reason is Reason.ADDRESS_EXCLUDED


def test_global_nat64_allowed():
    assert AddressPolicy().check("64:ff9b::808:808") is None
