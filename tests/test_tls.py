"""STARTTLS in the probe: lab servers with certificates made at test time.

Each case is one lab host on its own 127.0.40.x address with its own MX domain. The
lab CA is given as ``tls.ca_file``, so a certificate it issued counts as trusted.
"""

from __future__ import annotations

import datetime
import ssl
from contextlib import asynccontextmanager

import pytest

from labkit import by_domain, first_probe, sweep_lab, world
from scanner.config import config_from_dict
from scanner.errors import ConfigError
from scanner.lab import certs
from scanner.lab.behaviours import Behaviour
from scanner.lab.smtp_server import SmtpHost
from scanner.lab.world import Lab
from scanner.results import CertificateInfo, Phase, Reason
from scanner.errors import failure_from_exception
from scanner.tls import TrustStore, certificate_info, name_matches

pytestmark = [
    pytest.mark.timeout(60),
    # TLS 1.0 is deprecated in the ssl module, and one lab server uses it on purpose.
    pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1(_1)? is deprecated:DeprecationWarning"),
]

SUBNET = "127.0.40"


def tls_context(authority: certs.LabCertificateAuthority, hostname: str, kind: str | None) -> ssl.SSLContext | None:
    """Return the server context for ``kind``: a key of certs.SERVER_TLS_KINDS, or None for no TLS."""
    if kind is None:
        return None
    return certs.server_context_for(authority, hostname, kind)


@asynccontextmanager
async def tls_lab(cases: list[tuple[str, str | None, object]], extra_records: dict | None = None):
    """Start a lab with one host per (label, TLS kind, behaviour); yield (lab, CA file).

    The domain ``<label>.tls.test`` has the MX ``mx.<label>.tls.test``. Hosts are made
    here rather than by ``Lab``, because a lab world has no TLS setting per host.
    """
    records = dict(extra_records or {})
    for index, (label, _kind, _behaviour) in enumerate(cases):
        records[f"{label}.tls.test"] = {"MX": [f"10 mx.{label}.tls.test."]}
        records[f"mx.{label}.tls.test"] = {"A": [f"{SUBNET}.{index + 1}"]}

    with certs.LabCertificateAuthority() as authority:
        async with Lab.from_dict(world(records, [])) as lab:
            port = 0
            for index, (label, kind, behaviour) in enumerate(cases):
                hostname = f"mx.{label}.tls.test"
                if isinstance(behaviour, str):
                    behaviour = Behaviour.preset(behaviour)
                elif isinstance(behaviour, dict):
                    behaviour = Behaviour.from_dict(behaviour)
                host = SmtpHost(f"{SUBNET}.{index + 1}", port, hostname, behaviour, tls_context(authority, hostname, kind))
                await host.start()
                lab.hosts.append(host)
                port = host.port
            yield lab, str(authority.ca_path)


CASES = [
    # (label, server TLS kind, lab behaviour)
    ("valid", "valid", "esmtp"),
    ("selfsigned", "self_signed", "esmtp"),
    ("expired", "expired", "esmtp"),
    ("wrongname", "wrong_name", "esmtp"),
    ("tls10", "tls1_0_only", "esmtp"),
    ("garbage", None, "tls_garbage"),
    ("refused", None, "starttls_454"),
    ("silent", None, {"behaviour": "tls_garbage", "garbage_bytes": 0}),
    ("plain", None, "esmtp"),
]


def test_tls_lab_cases(run, record_schema):
    async def scenario():
        async with tls_lab(CASES) as (lab, ca_file):
            domains = [f"{label}.tls.test" for label, _, _ in CASES]
            records = await sweep_lab(lab, domains, tls={"ca_file": ca_file, "timeout": 0.5})
            data_commands = sum(host.data_commands for host in lab.hosts)
            return by_domain(records), data_commands

    found, data_commands = run(scenario())
    assert data_commands == 0
    for record in found.values():
        record_schema.validate(record)
        # A TLS problem never makes the host unreachable: plain-text EHLO completed.
        assert record["status"] == "reachable", record
        assert first_probe(record)["completed"] is True

    def tls_of(label):
        return first_probe(found[f"{label}.tls.test"])["tls"]

    valid = tls_of("valid")
    assert valid["offered"] is True
    assert valid["attempted"] is True
    assert valid["accepted"] is True
    assert valid["starttls"]["code"] == 220
    assert valid["handshake_completed"] is True
    assert valid["version"] == "TLSv1.3"
    assert valid["cipher"].startswith("TLS_")
    assert valid["chain_trusted"] is True
    assert valid["chain_error"] is None
    assert valid["name_matches"] is True
    assert valid["failure"] is None
    assert valid["ehlo"]["code"] == 250
    assert "STARTTLS" not in valid["keywords"]
    assert "PIPELINING" in valid["keywords"]
    certificate = valid["certificate"]
    assert certificate["subject"] == "CN=mx.valid.tls.test"
    assert certificate["san"] == ["mx.valid.tls.test"]
    assert certificate["issuer"] == "CN=mxscan lab CA"
    assert certificate["key_type"] == "EC"
    assert certificate["key_bits"] == 256
    assert certificate["signature_algorithm"] == "ecdsa-with-SHA256"
    assert certificate["self_signed"] is False
    assert 28 <= certificate["days_to_expiry"] <= 30
    assert len(certificate["sha256"]) == 64

    selfsigned = tls_of("selfsigned")
    assert selfsigned["handshake_completed"] is True
    assert selfsigned["certificate"]["self_signed"] is True
    assert selfsigned["chain_trusted"] is False
    assert "self-signed" in selfsigned["chain_error"]
    assert selfsigned["name_matches"] is True

    expired = tls_of("expired")
    assert expired["handshake_completed"] is True
    assert expired["chain_trusted"] is False
    assert "not valid at validation time" in expired["chain_error"]
    assert expired["certificate"]["days_to_expiry"] < 0
    assert expired["name_matches"] is True

    wrongname = tls_of("wrongname")
    assert wrongname["handshake_completed"] is True
    assert wrongname["chain_trusted"] is True
    assert wrongname["name_matches"] is False
    assert wrongname["certificate"]["san"] == [certs.WRONG_NAME]

    tls10 = tls_of("tls10")
    assert tls10["handshake_completed"] is True
    assert tls10["version"] == "TLSv1"
    assert tls10["chain_trusted"] is True

    garbage = tls_of("garbage")
    assert garbage["accepted"] is True
    assert garbage["handshake_completed"] is False
    assert garbage["version"] is None
    assert garbage["certificate"] is None
    assert garbage["failure"]["phase"] == "tls"
    assert garbage["failure"]["reason"] == "tls_handshake_failed"
    assert garbage["failure"]["message"].startswith("TLS handshake failed: ")

    refused = tls_of("refused")
    assert refused["offered"] is True
    assert refused["attempted"] is True
    assert refused["accepted"] is False
    assert refused["starttls"]["code"] == 454
    assert refused["failure"]["phase"] == "starttls"
    assert refused["failure"]["reason"] == "starttls_refused"
    assert refused["failure"]["code"] == 454
    assert refused["failure"]["refusal"] == "temporary"
    # After a refused STARTTLS the session goes on in plain text and ends with QUIT.
    assert first_probe(found["refused.tls.test"])["quit"]["code"] == 221

    silent = tls_of("silent")
    assert silent["accepted"] is True
    assert silent["handshake_completed"] is False
    assert silent["failure"]["reason"] == "tls_timeout"
    assert silent["failure"]["phase"] == "tls"
    assert silent["failure"]["message"] == "TLS handshake timed out after 0.5 s"

    plain = tls_of("plain")
    assert plain["offered"] is False
    assert plain["attempted"] is False
    assert plain["starttls"] is None
    assert plain["failure"] is None


def test_tls_name_matches_per_exchange(run):
    # Two MX names share one address; the certificate names only the first.
    records = {
        "shared.tls.test": {"MX": ["10 mx.valid.tls.test.", "20 alias.tls.test."]},
        "alias.tls.test": {"A": [f"{SUBNET}.1"]},
    }

    async def scenario():
        async with tls_lab([("valid", "valid", "esmtp")], records) as (lab, ca_file):
            records_found = await sweep_lab(lab, ["shared.tls.test"], tls={"ca_file": ca_file})
            return records_found, lab.hosts[0].connections

    [record], connections = run(scenario())
    assert connections == 1
    matches = {exchange["name"]: exchange["addresses"][0]["probe"]["tls"]["name_matches"] for exchange in record["exchanges"]}
    assert matches == {"mx.valid.tls.test": True, "alias.tls.test": False}


def test_tls_system_store_rejects_lab_ca(run):
    async def scenario():
        async with tls_lab([("valid", "valid", "esmtp")]) as (lab, _ca_file):
            return await sweep_lab(lab, ["valid.tls.test"])

    [record] = run(scenario())
    tls = first_probe(record)["tls"]
    assert tls["handshake_completed"] is True
    if TrustStore.load().source == "none":
        pytest.skip("this machine has no system CA bundle")
    assert tls["chain_trusted"] is False
    assert tls["chain_error"] == "no chain to a certificate in the trust store"


def test_starttls_off_records_no_tls(run):
    async def scenario():
        async with tls_lab([("valid", "valid", "esmtp")]) as (lab, _ca_file):
            records = await sweep_lab(lab, ["valid.tls.test"], tls={"starttls": False})
            return records, lab.hosts[0].sessions

    [record], sessions = run(scenario())
    assert first_probe(record)["tls"] is None
    assert "STARTTLS" not in sessions[0].commands


# The pieces without sockets


def info_with_names(*names: str) -> CertificateInfo:
    return CertificateInfo(
        subject="CN=x",
        san=names,
        issuer="CN=x",
        serial="1",
        not_before="",
        not_after="",
        days_to_expiry=1,
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        self_signed=True,
        sha256="0" * 64,
    )


@pytest.mark.parametrize(
    ("names", "hostname", "expected"),
    [
        (("mx.a.test",), "mx.a.test", True),
        (("MX.A.TEST",), "mx.a.test.", True),
        (("other.a.test", "mx.a.test"), "mx.a.test", True),
        (("*.a.test",), "mx.a.test", True),
        (("*.a.test",), "a.test", False),
        (("*.a.test",), "x.mx.a.test", False),
        (("*.test",), "a.test", False),  # a wildcard needs at least two labels after it
        (("m*.a.test",), "mx.a.test", False),  # partial wildcards are not honoured
        (("mx.b.test",), "mx.a.test", False),
        (("127.0.0.1",), "mx.a.test", False),
        ((), "mx.a.test", False),
    ],
)
def test_name_matches_table(names, hostname, expected):
    assert name_matches(info_with_names(*names), hostname) is expected


def test_name_matches_without_certificate():
    assert name_matches(None, "mx.a.test") is None


def test_certificate_info_reads_lab_leaf():
    with certs.LabCertificateAuthority() as authority:
        files = authority.issue("mx.a.test", names=("mx.a.test", "127.0.0.9"))
        der = ssl.PEM_cert_to_DER_cert(files.certificate.read_text())
        now = datetime.datetime.now(datetime.timezone.utc)
        info = certificate_info(der, now)
    assert info.san == ("mx.a.test", "127.0.0.9")
    assert info.subject == "CN=mx.a.test"
    assert info.self_signed is False
    assert info.not_after.endswith("Z")
    assert int(info.serial, 16) > 0


def test_certificate_info_rejects_garbage():
    with pytest.raises(ValueError):
        certificate_info(b"not a certificate", datetime.datetime.now(datetime.timezone.utc))


def test_trust_store_verifies_lab_chain():
    now = datetime.datetime.now(datetime.timezone.utc)
    with certs.LabCertificateAuthority() as authority:
        store = TrustStore.load(str(authority.ca_path))
        leaf = ssl.PEM_cert_to_DER_cert(authority.leaf("mx.a.test").certificate.read_text())
        expired = ssl.PEM_cert_to_DER_cert(authority.expired("mx.a.test").certificate.read_text())
        other = certs.LabCertificateAuthority()
        try:
            foreign = ssl.PEM_cert_to_DER_cert(other.leaf("mx.a.test").certificate.read_text())
        finally:
            other.cleanup()

    assert store.verify([leaf], now) == (True, None)
    trusted, error = store.verify([expired], now)
    assert trusted is False
    assert "not valid at validation time" in error
    assert store.verify([foreign], now) == (False, "no chain to a certificate in the trust store")
    assert store.verify([], now) == (None, "the server sent no certificate")


def test_trust_store_ca_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        TrustStore.load(str(tmp_path / "missing.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificates here\n")
    with pytest.raises(ConfigError, match="no PEM certificate found"):
        TrustStore.load(str(empty))


def test_tls_failure_reasons():
    timeout = failure_from_exception(TimeoutError(), Phase.TLS)
    assert timeout.reason is Reason.TLS_TIMEOUT
    reset = failure_from_exception(ConnectionResetError(104, "Connection reset by peer"), Phase.TLS)
    assert reset.reason is Reason.TLS_HANDSHAKE_FAILED
    library = failure_from_exception(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), Phase.TLS)
    assert library.reason is Reason.TLS_HANDSHAKE_FAILED
    # Outside the handshake, the shared table decides: a timeout of the STARTTLS reply.
    assert failure_from_exception(TimeoutError(), Phase.STARTTLS).reason is Reason.REPLY_TIMEOUT


def test_tls_settings_validated():
    with pytest.raises(ConfigError, match="tls.timeout"):
        config_from_dict({"domains": [], "tls": {"timeout": 0}})
    with pytest.raises(ConfigError, match="tls.starttls"):
        config_from_dict({"domains": [], "tls": {"starttls": "yes"}})


def test_transcript_capped(run, record_schema):
    # 500 filler keywords make an EHLO reply of about 500 lines, twice (before and over TLS).
    cases = [("chatty", "valid", {"behaviour": "esmtp", "ehlo_filler_lines": 500})]

    async def scenario():
        async with tls_lab(cases) as (lab, ca_file):
            return await sweep_lab(lab, ["chatty.tls.test"], tls={"ca_file": ca_file}, transcript={"enabled": True, "max_lines": 50})

    [record] = run(scenario())
    record_schema.validate(record)
    probe = first_probe(record)
    assert len(probe["transcript"]) == 50
    assert probe["transcript_dropped"] > 900
    assert probe["transcript"][0]["line"].startswith("220 ")
    assert probe["tls"]["handshake_completed"] is True
