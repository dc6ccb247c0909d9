"""Certificates for the lab SMTP servers, made at run time with ``cryptography``.

A :class:`LabCertificateAuthority` creates a CA in a directory (a new temporary one
by default) and issues leaf certificates from it: valid for a host name, expired, or
for the wrong name. It also makes self-signed certificates. Every certificate and
key is written as PEM, and :func:`server_context` turns one into the
``ssl.SSLContext`` that :class:`scanner.lab.smtp_server.SmtpHost` uses for STARTTLS.

Keys are ECDSA P-256, because generating one takes about a millisecond while an
RSA-2048 key takes tens of milliseconds, and tests make many.

Old TLS: with OpenSSL 3.0 (3.0.19 is what Python 3.11.7 links on the project's
machines), TLS 1.0 and 1.1 only negotiate at security level 0, because level 1
and up reject their MD5-SHA1 handshake signatures. ``server_context`` lowers the
level for a server whose maximum version is below TLS 1.2, and
``client_context(..., legacy=True)`` does the same for a client. Both sides need
it: against a default client such a server fails the handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Leaf certificates are valid from one hour ago, to tolerate clock skew between
# the test and the TLS library, for 30 days.
_VALIDITY_BACKDATE = datetime.timedelta(hours=1)
_LEAF_LIFETIME = datetime.timedelta(days=30)
_CA_LIFETIME = datetime.timedelta(days=365)

WRONG_NAME = "wrong-name.lab.test"


@dataclass(frozen=True)
class CertificateFiles:
    """PEM files of one certificate and its private key.

    ``ca`` is the file of the CA that issued the certificate, or None for a
    self-signed one.
    """

    hostname: str
    certificate: Path
    key: Path
    ca: Path | None


class LabCertificateAuthority:
    """A lab CA that writes itself and the certificates it issues to ``directory``.

    Without ``directory`` it creates a temporary directory, which :meth:`cleanup`
    (or leaving the ``with`` block) removes.
    """

    def __init__(self, directory: Path | str | None = None, *, name: str = "mxscan lab CA") -> None:
        if directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="mxscan-lab-certs-"))
            self._owns_directory = True
        else:
            self.directory = Path(directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            self._owns_directory = False

        now = _now()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public_key = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _VALIDITY_BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = self.directory / "ca.pem"
        self.ca_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def __enter__(self) -> LabCertificateAuthority:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the directory if this object created it."""
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def issue(
        self,
        hostname: str,
        *,
        names: tuple[str, ...] | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        stem: str | None = None,
    ) -> CertificateFiles:
        """Issue a leaf certificate for ``names`` (default: ``hostname`` alone).

        Files are ``<stem>.pem`` and ``<stem>.key`` in the CA directory; the stem
        defaults to the host name.
        """
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        names = names if names is not None else (hostname,)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _VALIDITY_BACKDATE)
            .not_valid_after(not_after or now + _LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        certificate = builder.sign(self._key, hashes.SHA256())
        return _write_pair(self.directory, stem or hostname, hostname, certificate, key, self.ca_path)

    def leaf(self, hostname: str) -> CertificateFiles:
        """Issue a certificate that a client trusting this CA accepts for ``hostname``."""
        return self.issue(hostname)

    def expired(self, hostname: str) -> CertificateFiles:
        """Issue a certificate for ``hostname`` that expired a day ago."""
        now = _now()
        return self.issue(
            hostname,
            not_before=now - datetime.timedelta(days=31),
            not_after=now - datetime.timedelta(days=1),
            stem=f"{hostname}.expired",
        )

    def wrong_name(self, hostname: str) -> CertificateFiles:
        """Issue a certificate for ``hostname``'s server that names another host."""
        return self.issue(hostname, names=(WRONG_NAME,), stem=f"{hostname}.wrong-name")

    def self_signed(self, hostname: str) -> CertificateFiles:
        """Make a certificate for ``hostname`` signed by its own key, not by the CA."""
        return make_self_signed(hostname, self.directory)


def make_self_signed(hostname: str, directory: Path) -> CertificateFiles:
    """Write a self-signed certificate for ``hostname`` to ``directory``."""
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _VALIDITY_BACKDATE)
        .not_valid_after(now + _LEAF_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_general_names((hostname,))), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(Path(directory), f"{hostname}.self-signed", hostname, certificate, key, None)


def server_context(
    files: CertificateFiles,
    *,
    minimum_version: ssl.TLSVersion | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    legacy: bool | None = None,
) -> ssl.SSLContext:
    """Build a server-side SSLContext that presents ``files``.

    ``minimum_version`` and ``maximum_version`` limit the protocol versions, e.g.
    both TLSv1 for a server that offers only TLS 1.0. ``legacy`` sets OpenSSL
    security level 0, which TLS 1.0 and 1.1 need with OpenSSL 3; by default it
    is on when ``maximum_version`` is below TLS 1.2.
    """
    if legacy is None:
        legacy = maximum_version is not None and maximum_version < ssl.TLSVersion.TLSv1_2
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if legacy:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum_version is not None:
        context.minimum_version = minimum_version
    if maximum_version is not None:
        context.maximum_version = maximum_version
    context.load_cert_chain(files.certificate, files.key)
    return context


# Names for the certificate and protocol setups of a lab server, as a lab
# configuration file would spell them. Each maps to a certificate maker and the
# (minimum, maximum) TLS versions; None leaves the OpenSSL default.
SERVER_TLS_KINDS: dict[str, tuple[str, ssl.TLSVersion | None]] = {
    "valid": ("leaf", None),
    "expired": ("expired", None),
    "self_signed": ("self_signed", None),
    "wrong_name": ("wrong_name", None),
    "tls1_0_only": ("leaf", ssl.TLSVersion.TLSv1),
    "tls1_1_only": ("leaf", ssl.TLSVersion.TLSv1_1),
}


def server_context_for(authority: LabCertificateAuthority, hostname: str, kind: str = "valid") -> ssl.SSLContext:
    """Build the server SSLContext of ``kind`` (a key of SERVER_TLS_KINDS) for ``hostname``.

    The ``*_only`` kinds pin both the minimum and maximum version, with a valid
    certificate. Raise ValueError for an unknown kind.
    """
    if kind not in SERVER_TLS_KINDS:
        raise ValueError(f"unknown TLS kind {kind!r}; valid kinds are: {', '.join(SERVER_TLS_KINDS)}")
    maker, version = SERVER_TLS_KINDS[kind]
    files = getattr(authority, maker)(hostname)
    return server_context(files, minimum_version=version, maximum_version=version)


def client_context(ca: Path | None, *, legacy: bool = False) -> ssl.SSLContext:
    """Build a client SSLContext for tests: verify against ``ca``, or verify nothing.

    With ``ca`` None the context skips certificate and name checks, as a scanner
    that records certificates without trusting them would.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=ca)
    if legacy:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
    return context


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    general_names: list[x509.GeneralName] = []
    for name in names:
        try:
            general_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general_names.append(x509.DNSName(name))
    return general_names


def _write_pair(
    directory: Path,
    stem: str,
    hostname: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca: Path | None,
) -> CertificateFiles:
    certificate_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return CertificateFiles(hostname, certificate_path, key_path, ca)
