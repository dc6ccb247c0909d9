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


def _is_special(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not address.is_global or address.is_multicast


class AddressPolicy:
    def __init__(self, allow_private: bool = False, allow: tuple[Network, ...] = (), exclude: tuple[Network, ...] = ()) -> None:
        self.allow_private = allow_private
        self.allow = allow
        self.exclude = exclude

    def check(self, text: str) -> Failure | None:
        """Return why ``text`` must not be probed, or ``None`` when it may be."""
        address = ipaddress.ip_address(text)
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            # ::ffff:10.0.0.1 reaches 10.0.0.1; judge it as that address.
            address = mapped

        for network in self.exclude:
            if address.version == network.version and address in network:
                return Failure(Phase.POLICY, Reason.ADDRESS_EXCLUDED, f"{text} is in the exclusion list ({network})")
        for network in self.allow:
            if address.version == network.version and address in network:
                return None
        if not self.allow_private and _is_special(address):
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
