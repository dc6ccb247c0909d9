"""Which addresses a sweep may connect to, decided before any connection, without I/O.

A domain's MX can point anywhere, including loopback or the scanning network's own
private ranges. By default only globally routable unicast addresses are probed: the
special-purpose ranges of the IANA IPv4 and IPv6 registries (RFC 6890 and its updates:
private, loopback, link-local, shared CGNAT space, documentation, benchmarking,
reserved) and multicast are skipped and recorded. Python's ``ipaddress`` module carries
those registries as ``is_global``; multicast is checked apart because ``is_global``
counts it as global.

The exclusion list is checked first, because an opt-out must win over everything. The
allow list comes next and can open a special-purpose range for a lab. Last comes the
special-purpose rule, unless ``allow_private`` lifts it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError
from .results import Failure, Phase, Reason

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str], where: str) -> tuple[Network, ...]:
    networks = []
    for index, value in enumerate(values):
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{where}[{index}]: {value!r} is not an address or CIDR range such as 192.0.2.0/24") from None
    return tuple(networks)


def read_network_file(path: Path) -> tuple[Network, ...]:
    """Read CIDR ranges, one per line, ``#`` comments allowed, as opt-out lists are usually kept."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read exclusion file {path}: {exc.strerror}") from None
    networks = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"{path}:{number}: {text!r} is not an address or CIDR range") from None
    return tuple(networks)


# IPv6 ranges that carry an IPv4 address inside: RFC 6052 NAT64 (well-known prefix,
# address in the last 32 bits), RFC 7136-deprecated IPv4-compatible ::a.b.c.d, and
# RFC 6145 SIIT ::ffff:0:a.b.c.d. 6to4 (RFC 3056) and Teredo (RFC 4380) have their
# own accessors in ``ipaddress``.
_LAST_32_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)
# RFC 8215 local-use NAT64 prefix: not global in the IANA registry, though Python 3.11's
# is_global returns True for it.
_NOT_GLOBAL_IPV6 = (ipaddress.IPv6Network("64:ff9b:1::/48"),)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Return the IPv4 addresses an IPv6 address reaches through a translation or tunnel."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.append(address.teredo[1])
    for network in _LAST_32_BITS:
        if address in network and int(address) & 0xFFFFFFFF:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _is_special(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.version == 6 and any(address in network for network in _NOT_GLOBAL_IPV6):
        return True
    return not address.is_global or address.is_multicast


class AddressPolicy:
    def __init__(self, allow_private: bool = False, allow: tuple[Network, ...] = (), exclude: tuple[Network, ...] = ()) -> None:
        self.allow_private = allow_private
        self.allow = allow
        self.exclude = exclude

    def check(self, text: str) -> Failure | None:
        """Return why ``text`` must not be probed, or ``None`` when it may be."""
        address = ipaddress.ip_address(text)
        # ::ffff:10.0.0.1, 64:ff9b::a00:1 and 2002:a00:1:: all reach 10.0.0.1, so each
        # address is judged together with the IPv4 addresses it carries.
        judged = [address]
        if address.version == 6:
            judged += _embedded_ipv4(address)

        for candidate in judged:
            for network in self.exclude:
                if candidate.version == network.version and candidate in network:
                    return Failure(Phase.POLICY, Reason.ADDRESS_EXCLUDED, f"{text} is in the exclusion list ({network})")
        for network in self.allow:
            if address.version == network.version and address in network:
                return None
        if not self.allow_private and any(_is_special(candidate) for candidate in judged):
            return Failure(
                Phase.POLICY,
                Reason.ADDRESS_NOT_GLOBAL,
                f"{text} is in a special-purpose range (private, loopback, link-local, shared, documentation, reserved or multicast); allow it with --allow-private or policy.allow",
            )
        return None


def build_policy(settings) -> AddressPolicy:
    """Build the policy from validated ``PolicySettings``, reading the exclusion file once."""
    exclude = parse_networks(settings.exclude, "policy.exclude")
    if settings.exclude_file:
        exclude += read_network_file(Path(settings.exclude_file))
    return AddressPolicy(settings.allow_private, parse_networks(settings.allow, "policy.allow"), exclude)
