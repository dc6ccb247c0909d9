"""The sweep pipeline: entries in, one record per domain out.

A reader feeds normalised entries into a bounded queue, ``concurrency`` workers take a
domain each through DNS and the probes, and a single writer task owns the output and
writes whole lines in completion order. Memory stays bounded by the queue sizes, not
by the length of the list. Whatever happens to one domain, including a bug in mxscan,
ends as that domain's record; the sweep itself goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .config import Settings, SweepConfig
from .dns.mx import Exchange, MxPlan, implicit_plan, plan_from_mx
from .dns.resolver import DnsLookupError, Resolver
from .errors import ConfigError, failure_from_exception
from .inputs import Entry, iter_entries
from .outcome import domain_status
from .policy import build_policy
from .output import LineWriter, Summary
from .probe.prober import Prober, skipped
from .results import (
    AddressResult,
    DomainResult,
    ExchangeResult,
    Failure,
    MxSource,
    Phase,
    Reason,
    Status,
)

log = logging.getLogger(__name__)

_DONE = object()


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dns_failure(error: DnsLookupError) -> Failure:
    return Failure(phase=Phase.DNS, reason=error.reason, message=str(error))


class Sweep:
    """One sweep: a resolver, a prober and the counts, shared by all domains."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resolver = Resolver(
            settings.resolvers,
            timeout=settings.dns.timeout,
            retries=settings.dns.retries,
            concurrency=settings.dns.concurrency,
        )
        self.prober = Prober(settings)
        self.policy = build_policy(settings.policy)
        self.summary = Summary()

    async def close(self) -> None:
        await self.resolver.close()

    # The pipeline

    async def run(self, entries: Iterable[Entry], writer: LineWriter) -> Summary:
        concurrency = self.settings.concurrency
        pending: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)
        finished: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)

        log.info("sweep started: concurrency %d, resolvers %s", concurrency, ", ".join(self.settings.resolvers) or "system")
        workers = [asyncio.create_task(self._work(pending, finished)) for _ in range(concurrency)]
        writing = asyncio.create_task(self._write(finished, writer))
        try:
            await self._feed(entries, pending)
            for _ in workers:
                await pending.put(_DONE)
            await asyncio.gather(*workers)
            await finished.put(_DONE)
            await writing
        finally:
            for task in (*workers, writing):
                task.cancel()
        log.info("sweep finished: %d domains in %.1f s", self.summary.domains, self.summary.elapsed)
        return self.summary

    async def _feed(self, entries: Iterable[Entry], pending: asyncio.Queue) -> None:
        # 8-byte digests of the names seen: a set of small ints costs far less than
        # the names themselves over millions of entries, and a collision (odds about
        # n^2 / 2^65) would only drop one entry as a duplicate.
        seen: set[bytes] = set()
        for entry in entries:
            if entry.name is not None:
                digest = hashlib.blake2b(entry.name.encode(), digest_size=8).digest()
                if digest in seen:
                    self.summary.duplicates += 1
                    log.debug("duplicate entry %r (%s) skipped", entry.given, entry.source)
                    continue
                seen.add(digest)
            await pending.put(entry)

    async def _work(self, pending: asyncio.Queue, finished: asyncio.Queue) -> None:
        while True:
            entry = await pending.get()
            if entry is _DONE:
                return
            await finished.put(await self.scan_domain(entry))

    async def _write(self, finished: asyncio.Queue, writer: LineWriter) -> None:
        while True:
            result = await finished.get()
            if result is _DONE:
                return
            writer.write(result)
            self.summary.add(result)

    # One domain

    async def scan_domain(self, entry: Entry) -> DomainResult:
        """Resolve and probe one domain; never raises except on cancellation."""
        started_at = _utc_now()
        started = time.perf_counter()

        def record(status: Status, failure: Failure | None = None, plan: MxPlan | None = None, exchanges=()) -> DomainResult:
            return DomainResult(
                domain=entry.given,
                query_name=entry.name,
                tags=entry.tags,
                status=status,
                started_at=started_at,
                elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
                failure=failure,
                mx_source=plan.source if plan else None,
                exchanges=tuple(exchanges),
                mx_left_out=plan.left_out if plan else 0,
            )

        if entry.invalid is not None:
            return record(Status.INVALID_INPUT, Failure(Phase.INPUT, entry.invalid, entry.problem or "invalid domain"))

        try:
            return await self._resolve_and_probe(entry, record)
        except Exception as exc:  # a bug must become this domain's record, not a dead sweep
            log.exception("scan of %s failed inside mxscan", entry.name)
            return record(Status.SCANNER_ERROR, failure_from_exception(exc, Phase.SCANNER))

    async def _resolve_and_probe(self, entry: Entry, record) -> DomainResult:
        name = entry.name
        try:
            plan = plan_from_mx(await self.resolver.mx(name), self.settings.limits.max_exchanges)
        except DnsLookupError as error:
            if error.reason is Reason.NXDOMAIN:
                return record(Status.NO_MAIL_DOMAIN, _dns_failure(error))
            return record(Status.DNS_ERROR, _dns_failure(error))

        if plan is not None and plan.source is MxSource.NULL:
            return record(Status.NULL_MX, Failure(Phase.DNS, Reason.NULL_MX, "the domain publishes a null MX (RFC 7505): it accepts no mail"), plan)

        if plan is None:
            plan = implicit_plan(name)
            answer = await self.resolver.addresses(name)
            if answer.error is not None:
                if answer.error.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                    failure = Failure(Phase.DNS, Reason.NO_MX_NO_ADDRESS, f"{name} has no MX records and no address")
                    return record(Status.NO_MAIL_DOMAIN, failure)
                return record(Status.DNS_ERROR, _dns_failure(answer.error))

        if plan.left_out:
            log.info("%s: %d MX records beyond the cap of %d left out", name, plan.left_out, self.settings.limits.max_exchanges)
        exchanges = await asyncio.gather(*(self._exchange(exchange) for exchange in plan.exchanges))
        status, failure = domain_status(tuple(exchanges))
        return record(status, failure, plan, exchanges)

    async def _exchange(self, exchange: Exchange) -> ExchangeResult:
        if exchange.ip_literal:
            failure = Failure(Phase.DNS, Reason.EXCHANGE_IS_IP_LITERAL, f"MX target {exchange.name} is an IP address, not a host name (RFC 5321 section 5.1)")
            return ExchangeResult(exchange.name, exchange.preference, failure=failure)

        answer = await self.resolver.addresses(exchange.name)
        if answer.error is not None:
            reason = Reason.NO_ADDRESS if answer.error.reason is Reason.NXDOMAIN else answer.error.reason
            failure = Failure(Phase.DNS, reason, str(answer.error))
            return ExchangeResult(exchange.name, exchange.preference, failure=failure)

        cap = self.settings.limits.max_addresses
        families = [("ipv4", answer.ipv4[:cap]), ("ipv6", answer.ipv6[:cap])]
        left_out = max(0, len(answer.ipv4) - cap) + max(0, len(answer.ipv6) - cap)
        addresses = [(family, address) for family, found in families for address in found]
        results = await asyncio.gather(*(self._address(family, address) for family, address in addresses))
        return ExchangeResult(exchange.name, exchange.preference, tuple(results), addresses_left_out=left_out)

    async def _address(self, family: str, address: str) -> AddressResult:
        if family == "ipv6" and not self.settings.smtp.ipv6:
            return AddressResult(address, family, skipped=skipped(Reason.IPV6_DISABLED, "IPv6 probing is off (smtp.ipv6)"))
        refusal = self.policy.check(address)
        if refusal is not None:
            log.debug("%s not probed: %s", address, refusal.message)
            return AddressResult(address, family, skipped=refusal)
        return AddressResult(address, family, probe=await self.prober.probe(address))


async def sweep_to(config: SweepConfig, settings: Settings, output: Path | None) -> Summary:
    """Sweep ``config``'s domains with ``settings``, writing lines to ``output`` or stdout."""
    with contextlib.ExitStack() as stack:
        if output is None:
            stream = sys.stdout.buffer
        else:
            try:
                stream = stack.enter_context(output.open("wb"))
            except OSError as exc:
                raise ConfigError(f"cannot open output file {output}: {exc.strerror}") from None
        sweep = Sweep(settings)
        try:
            return await sweep.run(iter_entries(config.domains, config.domains_file), LineWriter(stream))
        finally:
            await sweep.close()
