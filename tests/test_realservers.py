"""Tests of the real NSD, Unbound and Postfix that the interop tests run against.

Every query goes to an explicit 127.x address, and smtplib always gets
local_hostname, so nothing here reads /etc/resolv.conf or queries the system
resolver for this host's name.
"""

from __future__ import annotations

import secrets
import smtplib
import ssl
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from cryptography import x509

import realservers_fixture
from realservers_fixture import (  # noqa: F401  (pytest finds fixtures by their names in this module)
    AUTHORITY_ADDRESS,
    AUTHORITY_PORT,
    RealExim,
    RealServers,
    RealServersError,
    real_exim,
    real_servers,
    require_real_servers,
)

pytestmark = pytest.mark.interop

CLIENT_HOSTNAME = "scanner.test"
SMTP_TIMEOUT_SECONDS = 10
DNS_TIMEOUT_SECONDS = 3


def resolve(servers: RealServers, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, servers.resolver_address, port=servers.resolver_port, timeout=DNS_TIMEOUT_SECONDS)


def answer_texts(response: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in response.answer for rdata in rrset)


def connect_smtp(servers: RealServers) -> smtplib.SMTP:
    # Passing the address to the constructor also makes it the server_hostname
    # that starttls() gives to the TLS layer.
    return smtplib.SMTP(
        servers.postfix_address,
        servers.smtp_port,
        local_hostname=CLIENT_HOSTNAME,
        timeout=SMTP_TIMEOUT_SECONDS,
    )


def wait_until_empty(folder: Path, timeout: float) -> list[Path]:
    """Poll a folder until it has no entries; return what is left at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        entries = list(folder.rglob("*"))
        if not entries or time.monotonic() >= deadline:
            return entries
        time.sleep(0.1)


def zone_text(origin: str, serial: int, mx_host: str) -> str:
    return (
        f"$ORIGIN {origin}.\n"
        "$TTL 300\n"
        f"@ IN SOA ns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 300\n"
        f"@ IN NS ns.{origin}.\n"
        f"@ IN MX 10 {mx_host}.\n"
        f"ns IN A {AUTHORITY_ADDRESS}\n"
    )


def test_requirements_non_root_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realservers_fixture.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match="not running as root"):
        require_real_servers()


def test_requirements_missing_package_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realservers_fixture, "REQUIRED_PROGRAMS", {"/nonexistent/sbin/nsd": "nsd"})
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y nsd\).*CI is set"):
        require_real_servers()


def test_requirements_missing_package_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realservers_fixture, "REQUIRED_PROGRAMS", {"/nonexistent/sbin/nsd": "nsd"})
    monkeypatch.setenv("CI", "false")

    with pytest.raises(pytest.skip.Exception, match="missing Debian packages nsd"):
        require_real_servers()


def test_resolver_answers_interop_mx(real_servers: RealServers) -> None:
    response = resolve(real_servers, "interop.test", "MX")

    assert response.rcode() == dns.rcode.NOERROR
    assert answer_texts(response) == ["10 mx.interop.test."]


def test_resolver_answers_mx_host_address(real_servers: RealServers) -> None:
    response = resolve(real_servers, real_servers.postfix_hostname, "A")

    assert response.rcode() == dns.rcode.NOERROR
    assert answer_texts(response) == [real_servers.postfix_address]


def test_resolver_string_matches_fields(real_servers: RealServers) -> None:
    assert real_servers.resolver == f"{real_servers.resolver_address}:{real_servers.resolver_port}"


@pytest.mark.parametrize("name", ["missing.interop.test", "missing-zone.test", "missing.example"])
def test_resolver_unknown_test_name_nxdomain(real_servers: RealServers, name: str) -> None:
    started = time.monotonic()
    response = resolve(real_servers, name, "MX")
    elapsed = time.monotonic() - started

    assert response.rcode() == dns.rcode.NXDOMAIN
    assert elapsed < 1.0, f"NXDOMAIN for {name} took {elapsed:.2f}s"


def test_resolver_refuses_other_names(real_servers: RealServers) -> None:
    # .internal is reserved for private use, so this name exists nowhere.
    started = time.monotonic()
    response = resolve(real_servers, "mail.mxscan.internal", "MX")
    elapsed = time.monotonic() - started

    assert response.rcode() == dns.rcode.REFUSED
    assert elapsed < 1.0, f"REFUSED took {elapsed:.2f}s"


def test_authority_answers_directly(real_servers: RealServers) -> None:
    query = dns.message.make_query("interop.test", "MX")
    response = dns.query.udp(query, AUTHORITY_ADDRESS, port=AUTHORITY_PORT, timeout=DNS_TIMEOUT_SECONDS)

    assert response.flags & dns.flags.AA
    assert answer_texts(response) == ["10 mx.interop.test."]


def test_load_zone_adds_and_replaces(real_servers: RealServers) -> None:
    real_servers.load_zone("reload.test", zone_text("reload.test", 1, "mx-a.reload.test"))
    assert answer_texts(resolve(real_servers, "reload.test", "MX")) == ["10 mx-a.reload.test."]

    real_servers.load_zone("reload.test", zone_text("reload.test", 2, "mx-b.reload.test"))
    assert answer_texts(resolve(real_servers, "reload.test", "MX")) == ["10 mx-b.reload.test."]


def test_load_zone_same_serial_reloads(real_servers: RealServers) -> None:
    real_servers.load_zone("same-serial.test", zone_text("same-serial.test", 7, "mx-a.same-serial.test"))
    real_servers.load_zone("same-serial.test", zone_text("same-serial.test", 7, "mx-b.same-serial.test"))

    assert answer_texts(resolve(real_servers, "same-serial.test", "MX")) == ["10 mx-b.same-serial.test."]


def test_load_zone_under_example(real_servers: RealServers) -> None:
    real_servers.load_zone("lab.example", zone_text("lab.example", 1, "mx.lab.example"))

    assert answer_texts(resolve(real_servers, "lab.example", "MX")) == ["10 mx.lab.example."]


def test_load_zone_invalid_text_raises(real_servers: RealServers) -> None:
    with pytest.raises(RealServersError, match="nsd-checkzone rejected"):
        real_servers.load_zone("broken.test", "this is not a zone file\n")

    assert resolve(real_servers, "interop.test", "MX").rcode() == dns.rcode.NOERROR


def test_postfix_banner(real_servers: RealServers) -> None:
    client = smtplib.SMTP(local_hostname=CLIENT_HOSTNAME, timeout=SMTP_TIMEOUT_SECONDS)
    code, banner = client.connect(real_servers.postfix_address, real_servers.smtp_port)
    client.quit()

    assert code == 220
    assert banner.startswith(f"{real_servers.postfix_hostname} ESMTP".encode())


def test_postfix_ehlo_offers_starttls(real_servers: RealServers) -> None:
    client = connect_smtp(real_servers)
    code, reply = client.ehlo()
    features = dict(client.esmtp_features)
    client.quit()

    assert code == 250
    assert reply.splitlines()[0] == real_servers.postfix_hostname.encode()
    assert "starttls" in features
    assert "pipelining" in features
    assert "enhancedstatuscodes" in features


def test_postfix_starttls_presents_fixture_certificate(real_servers: RealServers) -> None:
    context = ssl.create_default_context(cafile=str(real_servers.tls_cert_path))
    # The TLS layer gets the IP address as server_hostname, so the name in the
    # certificate is checked below instead.
    context.check_hostname = False

    client = connect_smtp(real_servers)
    client.ehlo()
    code, _ = client.starttls(context=context)
    peer_der = client.sock.getpeercert(binary_form=True)
    client.ehlo()
    features_after_tls = dict(client.esmtp_features)
    client.quit()

    assert code == 220
    assert peer_der is not None
    peer = x509.load_der_x509_certificate(peer_der)
    expected = x509.load_pem_x509_certificate(real_servers.tls_cert_path.read_bytes())
    assert peer == expected
    names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [real_servers.postfix_hostname]
    assert "starttls" not in features_after_tls


def test_postfix_accepts_postmaster(real_servers: RealServers) -> None:
    client = connect_smtp(real_servers)
    client.ehlo()
    client.mail("probe@scanner.test")
    code, reply = client.rcpt("postmaster@interop.test")
    client.quit()

    assert code == 250
    assert reply.startswith(b"2.1.5")


def test_postfix_rejects_random_recipient(real_servers: RealServers) -> None:
    recipient = f"nobody-{secrets.token_hex(6)}@interop.test"
    client = connect_smtp(real_servers)
    client.ehlo()
    client.mail("probe@scanner.test")
    code, reply = client.rcpt(recipient)
    client.quit()

    assert code == 550
    assert reply.startswith(b"5.1.1")


def test_postfix_rejects_relay(real_servers: RealServers) -> None:
    client = connect_smtp(real_servers)
    client.ehlo()
    client.mail("probe@scanner.test")
    code, reply = client.rcpt("someone@elsewhere.test")
    client.quit()

    assert code == 554
    assert b"Relay access denied" in reply


def test_postfix_rejects_data_keeps_no_mail(real_servers: RealServers) -> None:
    client = connect_smtp(real_servers)
    client.ehlo()
    client.mail("probe@scanner.test")
    client.rcpt("postmaster@interop.test")
    code, _ = client.docmd("DATA")
    client.quit()

    assert code == 554
    # The accepted RCPT made smtpd open a queue file in incoming/; the cleanup
    # daemon deletes it once the session ends without a message.
    spool = real_servers.state_dir / "postfix" / "spool"
    for queue in ("maildrop", "incoming", "active", "deferred", "hold"):
        assert wait_until_empty(spool / queue, timeout=5) == [], f"queue {queue} is not empty"


def connect_exim(exim: RealExim) -> smtplib.SMTP:
    return smtplib.SMTP(exim.address, exim.smtp_port, local_hostname=CLIENT_HOSTNAME, timeout=SMTP_TIMEOUT_SECONDS)


def test_resolver_answers_exim_mx(real_servers: RealServers, real_exim: RealExim) -> None:
    mx_response = resolve(real_servers, real_exim.zone_origin, "MX")
    address_response = resolve(real_servers, real_exim.hostname, "A")

    assert answer_texts(mx_response) == [f"10 {real_exim.hostname}."]
    assert answer_texts(address_response) == [real_exim.address]


def test_exim_banner(real_exim: RealExim) -> None:
    client = smtplib.SMTP(local_hostname=CLIENT_HOSTNAME, timeout=SMTP_TIMEOUT_SECONDS)
    code, banner = client.connect(real_exim.address, real_exim.smtp_port)
    client.quit()

    assert code == 220
    assert banner.startswith(f"{real_exim.hostname} ESMTP Exim".encode())


def test_exim_starttls_presents_fixture_certificate(real_exim: RealExim) -> None:
    context = ssl.create_default_context(cafile=str(real_exim.tls_cert_path))
    context.check_hostname = False

    client = connect_exim(real_exim)
    client.ehlo()
    features = dict(client.esmtp_features)
    code, _ = client.starttls(context=context)
    peer_der = client.sock.getpeercert(binary_form=True)
    client.quit()

    assert "starttls" in features
    assert code == 220
    assert peer_der is not None
    peer = x509.load_der_x509_certificate(peer_der)
    names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [real_exim.hostname]


def test_exim_recipients_and_data(real_exim: RealExim) -> None:
    client = connect_exim(real_exim)
    client.ehlo()
    client.mail("probe@scanner.test")
    postmaster_code, _ = client.rcpt(f"postmaster@{real_exim.zone_origin}")
    random_code, random_reply = client.rcpt(f"nobody-{secrets.token_hex(6)}@{real_exim.zone_origin}")
    relay_code, relay_reply = client.rcpt("someone@elsewhere.test")
    data_code, _ = client.docmd("DATA")
    client.quit()

    assert postmaster_code == 250
    assert random_code == 550
    assert random_reply.startswith(b"5.1.1")
    assert relay_code == 550
    assert relay_reply.startswith(b"5.7.1")
    assert data_code == 550
