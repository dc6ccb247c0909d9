"""A lab world: one DNS authority and a set of SMTP hosts on loopback, from one mapping.

The YAML form (see ``configs/demo-lab.yaml``)::

    dns:
      address: 127.0.53.1      # the authority listens here, UDP and TCP
      port: 0                  # 0 picks a free port
    zone:                      # records and behaviours, as scanner.lab.zone reads them
      records: {...}
      behaviours: {...}
    smtp:
      port: 0                  # one port for every host; 0 picks a free one
      hosts:
        - address: 127.0.25.1
          hostname: mx1.good.test
          behaviour: esmtp     # a preset name, or a mapping with "behaviour" and parameters

Every host shares one port number because the scanner uses one port for all mail
hosts; the first host binds the port (a free one when 0) and the others take the same
number on their own addresses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Any

import yaml

from .behaviours import Behaviour
from .dns_server import DnsAuthority
from .smtp_server import SmtpHost
from .zone import Zone

log = logging.getLogger(__name__)

DEFAULT_DNS_ADDRESS = "127.0.53.1"


class LabConfigError(ValueError):
    """A lab world description that cannot be used; the message names the entry."""


@dataclasses.dataclass(frozen=True)
class HostSpec:
    address: str
    hostname: str
    behaviour: Behaviour


def _loopback(address: Any, where: str) -> str:
    try:
        parsed = ipaddress.ip_address(str(address))
    except ValueError:
        raise LabConfigError(f"{where}: {address!r} is not an IP address") from None
    if not parsed.is_loopback:
        raise LabConfigError(f"{where}: {address} is not a loopback address; lab servers bind only to 127.0.0.0/8 or ::1")
    return str(parsed)


def _behaviour(value: Any, where: str) -> Behaviour:
    try:
        if isinstance(value, str):
            return Behaviour.preset(value)
        if isinstance(value, dict):
            return Behaviour.from_dict(value)
    except ValueError as exc:
        raise LabConfigError(f"{where}: {exc}") from None
    raise LabConfigError(f"{where}: expected a behaviour name or mapping, got {value!r}")


class Lab:
    """The DNS authority and SMTP hosts of one world; use ``async with``."""

    def __init__(self, zone: Zone, hosts: list[HostSpec], dns_address: str = DEFAULT_DNS_ADDRESS, dns_port: int = 0, smtp_port: int = 0) -> None:
        self.zone = zone
        self.host_specs = hosts
        self.dns = DnsAuthority(zone, host=dns_address, port=dns_port)
        self._smtp_port = smtp_port
        self.hosts: list[SmtpHost] = []

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Lab":
        if not isinstance(data, dict):
            raise LabConfigError("lab world: expected a mapping with 'dns', 'zone' and 'smtp'")
        dns = data.get("dns") or {}
        smtp = data.get("smtp") or {}
        try:
            zone = Zone.from_dict(data.get("zone") or {})
        except ValueError as exc:
            raise LabConfigError(f"zone: {exc}") from None

        hosts = []
        for index, item in enumerate(smtp.get("hosts") or []):
            where = f"smtp.hosts[{index}]"
            if not isinstance(item, dict) or "address" not in item:
                raise LabConfigError(f"{where}: expected a mapping with 'address', 'hostname' and 'behaviour'")
            hosts.append(HostSpec(
                address=_loopback(item["address"], where),
                hostname=str(item.get("hostname", "mx.lab.test")),
                behaviour=_behaviour(item.get("behaviour", "esmtp"), f"{where}.behaviour"),
            ))
        return cls(
            zone,
            hosts,
            dns_address=_loopback(dns.get("address", DEFAULT_DNS_ADDRESS), "dns.address"),
            dns_port=int(dns.get("port", 0)),
            smtp_port=int(smtp.get("port", 0)),
        )

    @classmethod
    def from_yaml(cls, path: Path) -> "Lab":
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))

    @property
    def resolver(self) -> str:
        """The authority's address as IP:PORT, for ``--resolver``."""
        return self.dns.address

    @property
    def smtp_port(self) -> int:
        return self.hosts[0].port if self.hosts else self._smtp_port

    async def start(self) -> None:
        await self.dns.start()
        port = self._smtp_port
        try:
            for spec in self.host_specs:
                host = SmtpHost(address=spec.address, port=port, hostname=spec.hostname, behaviour=spec.behaviour)
                await host.start()
                self.hosts.append(host)
                port = host.port
        except BaseException:
            await self.stop()
            raise
        log.info("lab started: DNS on %s, %d SMTP hosts on port %d", self.resolver, len(self.hosts), self.smtp_port)

    async def stop(self) -> None:
        for host in self.hosts:
            await host.stop()
        await self.dns.stop()

    def host(self, address: str) -> SmtpHost:
        for host in self.hosts:
            if host.address == address:
                return host
        raise KeyError(address)

    async def __aenter__(self) -> "Lab":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
