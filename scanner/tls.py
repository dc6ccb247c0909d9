"""STARTTLS facts: the client context, certificate facts, chain trust and name matching.

The probe's own handshake must complete whatever the certificate is, so that a bad
certificate is recorded as such and never reads as "no STARTTLS". The client context
therefore verifies nothing and accepts every protocol version and cipher that the
linked OpenSSL can still speak. The certificate is judged afterwards, from the DER
bytes the server sent:

- ``certificate_info`` reads the leaf with ``cryptography``;
- ``TrustStore.verify`` checks the chain against the system trust store, or against
  the CA bundle named by ``tls.ca_file``, with ``cryptography``'s X.509 verifier;
- ``name_matches`` checks a host name against the certificate's subject alternative
  names, so that each MX name on a shared address gets its own result.

Nothing here opens a socket; ``TrustStore.load`` reads the CA bundle from disk once.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import re
import ssl
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import verification

from .errors import ConfigError
from .results import CertificateInfo

log = logging.getLogger(__name__)

# OpenSSL 3 rejects servers without RFC 5746 secure renegotiation unless this option
# is set. ssl.OP_LEGACY_SERVER_CONNECT exists only from Python 3.12, so the value
# comes from OpenSSL's ssl.h (SSL_OP_LEGACY_SERVER_CONNECT).
_OP_LEGACY_SERVER_CONNECT = getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0x4)

# Security level 0 lets OpenSSL 3 negotiate TLS 1.0 and 1.1 and the old ciphers that
# level 1 and up reject, so a server that speaks only those is recorded with its
# version and cipher instead of failing the handshake. "ALL" leaves out only the
# eNULL ciphers, which encrypt nothing.
_CLIENT_CIPHERS = "ALL:@SECLEVEL=0"

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def client_context() -> ssl.SSLContext:
    """Build the probe's TLS client context: no verification, every version and cipher.

    The certificate is checked separately (``TrustStore``, ``name_matches``), so a bad
    certificate never stops the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers(_CLIENT_CIPHERS)
    context.options |= _OP_LEGACY_SERVER_CONNECT
    return context


def peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """Return the DER certificates the server sent, leaf first.

    Python 3.13 has ``SSLObject.get_unverified_chain``; Python 3.10 to 3.12 have the
    same method on the private ``_sslobj``. Without either, only the leaf is returned,
    and a chain that needs the server's intermediates then fails to verify.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        inner = getattr(ssl_object, "_sslobj", None)
        getter = getattr(inner, "get_unverified_chain", None)
    chain = getter() if getter is not None else None
    if not chain:
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    return [item if isinstance(item, bytes) else item.public_bytes(ssl._ssl.ENCODING_DER) for item in chain]


def _utc(value: datetime.datetime) -> str:
    return value.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _key_facts(certificate: x509.Certificate) -> tuple[str, int]:
    try:
        key = certificate.public_key()
    except (ValueError, TypeError):
        # An algorithm cryptography does not support (GOST, say): name it by its OID.
        return certificate.public_key_algorithm_oid.dotted_string, 0
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, 0


def _is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def subject_alt_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """Return the DNS names and IP addresses of the subjectAltName extension, in order."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    except ValueError:
        # A malformed extension is a fact about the certificate, not a scanner bug.
        return ()
    names = [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]
    names.extend(str(address) for address in extension.value.get_values_for_type(x509.IPAddress))
    return tuple(names)


def certificate_info(der: bytes, now: datetime.datetime) -> CertificateInfo:
    """Read the facts of one DER certificate; ``now`` is an aware UTC time.

    Raises ``ValueError`` when the bytes are not a certificate that cryptography can parse.
    """
    certificate = x509.load_der_x509_certificate(der)
    key_type, key_bits = _key_facts(certificate)
    not_after = certificate.not_valid_after_utc
    oid = certificate.signature_algorithm_oid
    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        san=subject_alt_names(certificate),
        issuer=certificate.issuer.rfc4514_string(),
        serial=format(certificate.serial_number, "X"),
        not_before=_utc(certificate.not_valid_before_utc),
        not_after=_utc(not_after),
        days_to_expiry=math.floor((not_after - now).total_seconds() / 86400),
        key_type=key_type,
        key_bits=key_bits,
        # cryptography names the OIDs it recognises (``_name``). Others keep the dotted form.
        signature_algorithm=getattr(oid, "_name", None) or oid.dotted_string,
        self_signed=_is_self_signed(certificate),
        sha256=hashlib.sha256(der).hexdigest(),
    )


def _labels(name: str) -> list[str]:
    return name.rstrip(".").lower().split(".")


def name_matches(certificate: CertificateInfo | None, hostname: str) -> bool | None:
    """Check whether the certificate is valid for ``hostname`` (an MX name, A-labels).

    Follows RFC 9525 section 6.3: only DNS names in subjectAltName count (the subject's
    common name does not), and a wildcard is a whole left-most label "*" that matches
    exactly one label. Returns None when there is no certificate.
    """
    if certificate is None:
        return None
    wanted = _labels(hostname)
    for name in certificate.san:
        presented = _labels(name)
        if len(presented) != len(wanted):
            continue
        if presented[0] == "*" and len(presented) > 2:
            if presented[1:] == wanted[1:]:
                return True
        elif presented == wanted:
            return True
    return False


def _load_pem_bundle(data: bytes, source: Path) -> list[x509.Certificate]:
    certificates = []
    skipped = 0
    for match in _PEM_CERTIFICATE.finditer(data):
        try:
            # Some long-lived roots have a serial that RFC 5280 disallows; cryptography
            # still loads them but warns, once per certificate and sweep.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certificates.append(x509.load_pem_x509_certificate(match.group(0)))
        except ValueError:
            skipped += 1
    if skipped:
        log.info("trust store %s: %d certificates that cryptography cannot parse left out", source, skipped)
    return certificates


def _clean_verification_error(text: str) -> str:
    # cryptography appends the certificate's repr, which is long and adds nothing.
    text = text.split(" (encountered processing", 1)[0]
    return text.removeprefix("validation failed: ")


class TrustStore:
    """Root certificates that a chain must lead to, read once from a PEM bundle.

    An empty store (no bundle found) returns None for every chain, so mxscan does not
    claim that a chain is trusted or untrusted.
    """

    def __init__(self, certificates: list[x509.Certificate], source: str) -> None:
        self.source = source
        self._store = verification.Store(certificates) if certificates else None

    @classmethod
    def load(cls, ca_file: str = "") -> "TrustStore":
        """Read ``ca_file``, or the system bundle that OpenSSL uses when it is empty.

        Raises ``ConfigError`` when a ``ca_file`` that was given cannot be read or contains
        no certificate.
        """
        if ca_file:
            path = Path(ca_file)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"tls.ca_file: cannot read {path}: {exc.strerror}") from None
            certificates = _load_pem_bundle(data, path)
            if not certificates:
                raise ConfigError(f"tls.ca_file: no PEM certificate found in {path}; give a bundle of CA certificates in PEM form")
            return cls(certificates, str(path))

        paths = ssl.get_default_verify_paths()
        for candidate in (paths.cafile, paths.openssl_cafile):
            if candidate and Path(candidate).is_file():
                path = Path(candidate)
                return cls(_load_pem_bundle(path.read_bytes(), path), str(path))
        # NOTE: a system that keeps its roots only as a hashed directory (capath) is not
        # read; chain_trusted is then null for every certificate.
        log.warning("no system CA bundle found; chain trust will not be recorded (set tls.ca_file)")
        return cls([], "none")

    def verify(self, chain: list[bytes], now: datetime.datetime) -> tuple[bool | None, str | None]:
        """Check that the leaf (``chain[0]``) leads to a root of this store.

        The other certificates the server sent serve as intermediates. Validity
        dates, signatures and CA constraints are checked; the host name is not (see
        ``name_matches``). Returns (trusted, error text), or (None, reason) when there
        is nothing to verify against.
        """
        if self._store is None:
            return None, "no trust store available"
        if not chain:
            return None, "the server sent no certificate"
        try:
            leaf = x509.load_der_x509_certificate(chain[0])
        except ValueError as exc:
            return False, f"unparsable certificate: {exc}"
        intermediates = []
        for der in chain[1:]:
            try:
                intermediates.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue

        # The leaf is checked under a policy that permits any extension, because a
        # server certificate carries no clientAuth usage and the name is judged
        # separately; the CA certificates get the Web PKI rules.
        builder = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
        )
        try:
            builder.build_client_verifier().verify(leaf, intermediates)
        except verification.VerificationError as exc:
            text = _clean_verification_error(str(exc))
            if "candidates exhausted" in text:
                if _is_self_signed(leaf):
                    text = "self-signed certificate not in the trust store"
                else:
                    text = "no chain to a certificate in the trust store"
            return False, text
        return True, None

