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
import dataclasses
import datetime
import gc
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .config import Settings, SweepConfig
from .control import DEFAULT_STOP_GRACE, RunOptions, StopControl
from .dns.mx import Exchange, MxPlan, implicit_plan, plan_from_mx
from .dns.resolver import DnsLookupError, Resolver
from .errors import ConfigError, OutputError, failure_from_exception
from .inputs import Entry, iter_entries
from .keyset import DigestSet
from .limits import cap_connections, raise_open_files_limit
from .outcome import domain_status
from .policy import build_policy
from .output import LineWriter, Summary
from .pacing import ConnectionPacer, PacedRunner
from .progress import Progress, ProgressMode, count_lines
from .probe.prober import Prober, for_exchange, skipped
from .resume import prepare_resume
from .shard import Shard, entry_key, key_digest
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

# Allocations between two young-generation collections during a sweep (default 700).
GC_THRESHOLD_YOUNG = 50_000


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
        self.write_error: OSError | None = None

    async def close(self) -> None:
        await self.resolver.close()

    # The pipeline

    async def run(
        self,
        entries: Iterable[Entry],
        writer: LineWriter,
        *,
        stop: StopControl | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
        done: DigestSet | None = None,
        shard: Shard | None = None,
        expected_entries: int = 0,
    ) -> Summary:
        """Sweep ``entries`` and write one line per domain to ``writer``.

        Entries whose key is in ``done`` (from ``--resume``) or that belong to another
        ``shard`` are skipped. When ``stop.requested`` is set, no new domain starts,
        and the domains in flight get ``stop_grace`` seconds (none once
        ``stop.immediate`` is set) before they are abandoned without a line. Every line
        written before that is complete and flushed. ``expected_entries``, an estimate
        of the entries this run keeps, sizes the duplicate check up front.
        """
        stop = stop or StopControl()
        self._in_flight = 0
        concurrency = self.settings.concurrency
        pending: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)
        finished: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)

        log.info("sweep started: concurrency %d, resolvers %s", concurrency, ", ".join(self.settings.resolvers) or "system")
        workers = [asyncio.create_task(self._work(pending, finished, stop)) for _ in range(concurrency)]
        writing = asyncio.create_task(self._write(finished, writer, stop))
        feeding = asyncio.create_task(self._feed(entries, pending, done, shard, expected_entries))
        stopping = asyncio.create_task(stop.requested.wait())
        try:
            await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if feeding.done():
                feeding.result()
                for _ in workers:
                    await pending.put(_DONE)
            else:
                await self._drain_for_stop(feeding, pending, len(workers))
            await self._await_workers(workers, stop, stop_grace)
            await finished.put(_DONE)
            await writing
        finally:
            for task in (feeding, stopping, *workers, writing):
                task.cancel()
            if self.write_error is None:
                try:
                    writer.flush()
                except OSError as exc:
                    self.write_error = exc
        if self.write_error is not None:
            raise OutputError(f"cannot write the results: {self.write_error.strerror or self.write_error}")
        if stop.signal_name is not None:
            self.summary.stopped_by = stop.signal_name
        log.info("sweep %s: %d domains in %.1f s", "stopped" if self.summary.stopped_by else "finished", self.summary.domains, self.summary.elapsed)
        return self.summary

    @staticmethod
    async def _drain_for_stop(feeding: asyncio.Task, pending: asyncio.Queue, workers: int) -> None:
        # Stop intake: no entry waiting in the queue starts, and each worker gets its
        # end marker without waiting for room. The queue has room for twice as many items
        # as there are workers, so the markers always fit once it is drained.
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        while not pending.empty():
            pending.get_nowait()
        for _ in range(workers):
            pending.put_nowait(_DONE)

    async def _await_workers(self, workers: list[asyncio.Task], stop: StopControl, grace: float) -> None:
        all_done = asyncio.gather(*workers)
        stopping = asyncio.create_task(stop.requested.wait())
        immediate = asyncio.create_task(stop.immediate.wait())
        try:
            await asyncio.wait({all_done, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not all_done.done():
                log.info("waiting up to %.0f s for %d domains in flight", grace, self._in_flight)
                await asyncio.wait({all_done, immediate}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            if not all_done.done():
                self.summary.abandoned += self._in_flight
                log.warning("abandoned %d domains in flight; --resume sweeps them again", self._in_flight)
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            else:
                all_done.result()
        finally:
            stopping.cancel()
            immediate.cancel()
            all_done.cancel()

    async def _feed(
        self, entries: Iterable[Entry], pending: asyncio.Queue, done: DigestSet | None = None, shard: Shard | None = None, expected: int = 0
    ) -> None:
        # 64-bit digests of the keys seen, in a compact set: a collision (odds about
        # n^2 / 2^65) would only drop one entry as a duplicate.
        seen = DigestSet(expected)
        for entry in entries:
            digest = key_digest(entry_key(entry))
            if shard is not None and not shard.owns_digest(digest):
                continue
            if entry.name is not None and not seen.add(digest):
                self.summary.duplicates += 1
                log.debug("duplicate entry %r (%s) skipped", entry.given, entry.source)
                continue
            if done is not None and digest in done:
                self.summary.resumed += 1
                continue
            await pending.put(entry)

    async def _work(self, pending: asyncio.Queue, finished: asyncio.Queue, stop: StopControl | None = None) -> None:
        while True:
            entry = await pending.get()
            if entry is _DONE:
                return
            if stop is not None and stop.requested.is_set():
                continue
            self._in_flight += 1
            try:
                result = await self.scan_domain(entry)
            finally:
                self._in_flight -= 1
            await finished.put(result)

    async def _write(self, finished: asyncio.Queue, writer: LineWriter, stop: StopControl) -> None:
        while True:
            result = await finished.get()
            if result is _DONE:
                return
            if self.write_error is not None:
                continue  # keep the workers unblocked until they see the stop
            try:
                # Flush when no other line is waiting: each line still reaches the file
                # at once when the sweep is slow, and in batches when it is fast.
                writer.write(result, flush=finished.empty())
            except OSError as exc:
                self.write_error = exc
                log.error("cannot write the results: %s; stopping the sweep", exc.strerror or exc)
                stop.requested.set()
                stop.immediate.set()
                continue
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
        exchanges = await asyncio.gather(*(self._exchange(exchange, name) for exchange in plan.exchanges))
        status, failure = domain_status(tuple(exchanges))
        return record(status, failure, plan, exchanges)

    async def _exchange(self, exchange: Exchange, domain: str) -> ExchangeResult:
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
        results = await asyncio.gather(*(self._address(domain, exchange.name, family, address) for family, address in addresses))
        return ExchangeResult(exchange.name, exchange.preference, tuple(results), addresses_left_out=left_out)

    async def _address(self, domain: str, exchange_name: str, family: str, address: str) -> AddressResult:
        if family == "ipv6" and not self.settings.smtp.ipv6:
            return AddressResult(address, family, skipped=skipped(Reason.IPV6_DISABLED, "IPv6 probing is off (smtp.ipv6)"))
        refusal = self.policy.check(address)
        if refusal is not None:
            log.debug("%s not probed: %s", address, refusal.message)
            return AddressResult(address, family, skipped=refusal)
        probe = for_exchange(await self.prober.probe(address, exchange_name), exchange_name)
        recipient = None
        if self.settings.recipient.enabled and probe.completed:
            use_tls = probe.tls is not None and probe.tls.handshake_completed
            recipient = await self.prober.recipient(address, domain, exchange_name, use_tls)
        return AddressResult(address, family, probe=probe, recipient=recipient)


async def sweep_to(config: SweepConfig, settings: Settings, output: Path | None, options: RunOptions | None = None) -> Summary:
    """Sweep ``config``'s domains with ``settings``, writing lines to ``output`` or stdout.

    SIGINT and SIGTERM stop the sweep as ``Sweep.run`` describes; the summary's
    ``stopped_by`` then names the signal. With ``options.resume``, lines are appended
    to ``output`` and the domains it already contains are skipped.
    """
    options = options or RunOptions()
    settings = _fit_open_files_limit(settings)
    with _sweep_gc():
        return await _sweep_to(config, settings, output, options)


@contextlib.contextmanager
def _sweep_gc():
    # A sweep allocates a few hundred short-lived objects per domain (DNS answers,
    # futures, records). With the default gen-0 threshold of 700 the collector runs
    # every few domains and scans the long-lived objects each time. Freezing what
    # exists at the start and collecting less often cut the CPU of an MX lookup
    # against a local NSD from 217 to 168 microseconds on the benchmark machine.
    # Memory stays bounded because the pipeline leaves little garbage in cycles.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_YOUNG, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _sweep_to(config: SweepConfig, settings: Settings, output: Path | None, options: RunOptions) -> Summary:
    done = None
    if options.resume:
        if output is None:
            raise ConfigError("--resume needs -o/--output: it continues the sweep written to that file")
        done = prepare_resume(output).done

    with contextlib.ExitStack() as stack:
        if output is None:
            stream = sys.stdout.buffer
        else:
            try:
                stream = output.open("ab" if options.resume else "wb")
            except OSError as exc:
                raise ConfigError(f"cannot open output file {output}: {exc.strerror}") from None
            stack.callback(_close_output, stream)
        sweep = Sweep(settings)
        if options.connection_rate > 0:
            sweep.prober.runner = PacedRunner(sweep.prober.runner, ConnectionPacer(options.connection_rate))
        entries = _count_entries(config)
        if entries is not None and options.shard is not None:
            entries //= options.shard.count
        total = None
        if options.progress is not ProgressMode.NONE and entries is not None:
            total = max(entries - (len(done) if done is not None else 0), 0)
        progress = Progress(sweep.summary, options.progress, sys.stderr, total=total, interval=options.progress_interval)
        stop = StopControl()
        stop.install()
        try:
            async with progress:
                return await sweep.run(
                    iter_entries(config.domains, config.domains_file),
                    LineWriter(stream),
                    stop=stop,
                    stop_grace=options.stop_grace,
                    done=done,
                    shard=options.shard,
                    expected_entries=entries or 0,
                )
        finally:
            stop.remove()
            await sweep.close()


def _close_output(stream) -> None:
    try:
        stream.close()
    except OSError as exc:
        raise OutputError(f"cannot write the results: {exc.strerror or exc}") from None


def _fit_open_files_limit(settings: Settings) -> Settings:
    limit = raise_open_files_limit()
    connections = cap_connections(settings.connection_limit, limit)
    if connections == settings.connection_limit:
        return settings
    return dataclasses.replace(settings, max_connections=connections)


def _count_entries(config: SweepConfig) -> int | None:
    """Return an upper bound on the entries of ``config`` (a line count), or None if unreadable.

    Counting the newlines of a million-line file takes a few milliseconds.
    """
    total = len(config.domains)
    if config.domains_file is not None:
        try:
            total += count_lines(config.domains_file)
        except OSError:
            return None
    return total
