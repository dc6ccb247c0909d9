"""DNS lookups for a sweep, through aiodns (c-ares).

``Resolver`` asks for MX, A and AAAA records and turns each answer into plain values,
or raises ``DnsLookupError`` carrying a reason from the closed set. It filters the
answer section itself: only records owned by the name asked for, or by a name reached
from it through the CNAME records in the same answer, count. An answer that holds
records for some other name is reported as a bad response rather than believed.

Address answers of mail exchanges are cached for the whole sweep, since many domains
share the same exchanges; concurrent lookups of one exchange share one query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import aiodns
import pycares
from aiodns.error import DNSError

from ..results import Reason

log = logging.getLogger(__name__)

# c-ares follows a CNAME chain inside one answer; a longer chain than this is treated
# as a loop. Real chains are one or two links long.
MAX_CNAME_CHAIN = 8

_ERRNO_REASONS = {
    pycares.errno.ARES_ENOTFOUND: Reason.NXDOMAIN,
    pycares.errno.ARES_ESERVFAIL: Reason.SERVFAIL,
    pycares.errno.ARES_EREFUSED: Reason.DNS_REFUSED,
    pycares.errno.ARES_ETIMEOUT: Reason.DNS_TIMEOUT,
    pycares.errno.ARES_EBADRESP: Reason.DNS_BAD_RESPONSE,
    pycares.errno.ARES_EFORMERR: Reason.DNS_BAD_RESPONSE,
    pycares.errno.ARES_ENOTIMP: Reason.DNS_REFUSED,
}


class DnsLookupError(Exception):
    """A lookup that ended without an answer; ``reason`` is from ``scanner.results.Reason``."""

    def __init__(self, reason: Reason, name: str, qtype: str, message: str) -> None:
        super().__init__(f"{qtype} {name}: {message}")
        self.reason = reason
        self.name = name
        self.qtype = qtype


@dataclasses.dataclass(frozen=True, slots=True)
class AddressAnswer:
    """The addresses of one host name, or the reason there are none."""

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    error: DnsLookupError | None = None


def _record_type(name: str) -> int:
    return getattr(pycares, f"QUERY_TYPE_{name}")


def select_answers(qname: str, qtype: str, answer: list) -> list:
    """Keep the records of ``answer`` that answer ``qname`` directly or through its CNAME chain."""
    wanted_type = _record_type(qtype)
    cname_type = pycares.QUERY_TYPE_CNAME
    owners = {qname.lower().rstrip(".")}
    aliases = {}
    for record in answer:
        if record.type == cname_type:
            aliases[record.name.lower().rstrip(".")] = record.data.cname.lower().rstrip(".")

    current = qname.lower().rstrip(".")
    for _ in range(MAX_CNAME_CHAIN):
        target = aliases.get(current)
        if target is None or target in owners:
            break
        owners.add(target)
        current = target

    return [record for record in answer if record.type == wanted_type and record.name.lower().rstrip(".") in owners]


class Resolver:
    """aiodns queries with a bound on queries in flight and a sweep-wide address cache."""

    def __init__(self, servers: tuple[str, ...], timeout: float, retries: int, concurrency: int) -> None:
        options = {
            "timeout": timeout,
            "tries": retries + 1,
            # Never apply the system's search list: a sweep looks up exactly the names given.
            "flags": pycares.ARES_FLAG_NOSEARCH | pycares.ARES_FLAG_EDNS,
        }
        if servers:
            # Passed to the channel at creation, so c-ares treats them as the user's
            # choice and does not replace them when the system configuration changes.
            options["servers"] = list(servers)
        self._resolver = aiodns.DNSResolver(**options)
        self._slots = asyncio.Semaphore(concurrency)
        self._address_cache: dict[str, asyncio.Future[AddressAnswer]] = {}
        self.queries = 0

    async def close(self) -> None:
        await self._resolver.close()

    async def query(self, name: str, qtype: str) -> list:
        """Return the matching answer records; ``[]`` means NODATA. Raise ``DnsLookupError`` otherwise."""
        async with self._slots:
            self.queries += 1
            try:
                result = await self._resolver.query_dns(name, qtype)
            except DNSError as exc:
                code = exc.args[0] if exc.args else None
                if code == pycares.errno.ARES_ENODATA:
                    return []
                reason = _ERRNO_REASONS.get(code, Reason.DNS_FAILURE)
                message = exc.args[1] if len(exc.args) > 1 else str(exc)
                raise DnsLookupError(reason, name, qtype, message) from None

        records = select_answers(name, qtype, result.answer)
        if result.answer and not records and not any(r.type == pycares.QUERY_TYPE_CNAME for r in result.answer):
            raise DnsLookupError(Reason.DNS_BAD_RESPONSE, name, qtype, "answer holds records for another name")
        return records

    async def mx(self, name: str) -> list[tuple[int, str]]:
        records = await self.query(name, "MX")
        return [(record.data.priority, record.data.exchange) for record in records]

    async def _lookup_addresses(self, name: str) -> AddressAnswer:
        # AAAA is asked even when IPv6 probing is off, so that an exchange with only
        # IPv6 addresses is recorded as such rather than as having no address.
        qtypes = ("A", "AAAA")
        results = await asyncio.gather(*(self.query(name, qtype) for qtype in qtypes), return_exceptions=True)

        found: dict[str, tuple[str, ...]] = {}
        errors: list[DnsLookupError] = []
        for qtype, result in zip(qtypes, results):
            if isinstance(result, DnsLookupError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found[qtype] = tuple(record.data.addr for record in result)

        ipv4, ipv6_addresses = found.get("A", ()), found.get("AAAA", ())
        if ipv4 or ipv6_addresses:
            return AddressAnswer(ipv4, ipv6_addresses)
        if errors:
            # NXDOMAIN on one type and a timeout on the other says less than the timeout.
            errors.sort(key=lambda error: error.reason is Reason.NXDOMAIN)
            return AddressAnswer(error=errors[0])
        return AddressAnswer(error=DnsLookupError(Reason.NO_ADDRESS, name, "/".join(qtypes), "no address records"))

    async def addresses(self, name: str) -> AddressAnswer:
        """Look up the A and AAAA records of ``name``, once per sweep."""
        key = name.lower().rstrip(".")
        future = self._address_cache.get(key)
        if future is None:
            future = asyncio.ensure_future(self._lookup_addresses(key))
            self._address_cache[key] = future
        return await asyncio.shield(future)
