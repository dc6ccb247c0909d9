"""DNS lookups for a sweep, through c-ares (pycares, the binding under aiodns).

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
import collections
import contextlib
import dataclasses
import logging
import random

import pycares
from aiodns.error import DNSError

from ..results import Reason

log = logging.getLogger(__name__)

# Tries for a query whose reply c-ares could not parse, and the first pause before
# trying again (doubled each time); see Resolver.query.
BAD_RESPONSE_TRIES = 4
BAD_RESPONSE_PAUSE = 0.05

# Longest CNAME chain followed, over one answer or several. Real chains are one or two
# links long. A resolver may cut a long chain short (the lab does at 8 links), and then
# mxscan asks for the chain's end itself. Past 16 links the chain counts as a loop.
MAX_CNAME_CHAIN = 16

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

    def __init__(self, reason: Reason, name: str, qtype: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{qtype} {name}: {message}")
        self.reason = reason
        self.name = name
        self.qtype = qtype
        self.retryable = retryable


@dataclasses.dataclass(frozen=True, slots=True)
class AddressAnswer:
    """The addresses of one host name, or the reason there are none."""

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    error: DnsLookupError | None = None


def _record_type(name: str) -> int:
    return getattr(pycares, f"QUERY_TYPE_{name}")


def select_answers(qname: str, qtype: str, answer: list, links_before: int = 0) -> tuple[list, str, int]:
    """Keep the records of ``answer`` that answer ``qname`` directly or through its CNAME chain.

    Return the records, the name the chain ends at, and the chain's length counting
    ``links_before`` links followed in earlier answers. Raise ``DnsLookupError`` with
    ``cname_loop`` when the chain loops or runs past ``MAX_CNAME_CHAIN`` links.
    """
    wanted_type = _record_type(qtype)
    cname_type = pycares.QUERY_TYPE_CNAME
    owners = {qname.lower().rstrip(".")}
    aliases = {}
    for record in answer:
        if record.type == cname_type:
            aliases[record.name.lower().rstrip(".")] = record.data.cname.lower().rstrip(".")

    current = qname.lower().rstrip(".")
    links = links_before
    while (target := aliases.get(current)) is not None:
        if target in owners:
            raise DnsLookupError(Reason.CNAME_LOOP, qname, qtype, f"CNAME chain loops back to {target}")
        links += 1
        if links > MAX_CNAME_CHAIN:
            raise DnsLookupError(Reason.CNAME_LOOP, qname, qtype, f"CNAME chain longer than {MAX_CNAME_CHAIN} links")
        owners.add(target)
        current = target

    records = [record for record in answer if record.type == wanted_type and record.name.lower().rstrip(".") in owners]
    return records, current, links


# Why the resolver drives c-ares itself instead of through aiodns.DNSResolver
# (measured with aiodns 4.0.4, pycares 5.2.1, c-ares 1.34 against a local authority):
#
# - aiodns lets c-ares run its own event thread and hands each answer back with
#   call_soon_threadsafe, which costs about 1.5 times the CPU of watching the
#   channel's sockets from the event loop. ``_Channel`` registers a socket state
#   callback, so the loop reads the sockets and no helper thread runs.
# - One channel sends every query from one UDP socket. The kernel queues incoming
#   datagrams up to the socket's receive buffer (net.core.rmem_default, 208 KiB on
#   stock Linux), each charged with its buffer overhead of roughly 1 KiB, so a burst
#   of a thousand answers overflows it and the lost ones come back as timeouts. Each
#   channel here asks for a larger buffer, carries at most CHANNEL_QUERIES_IN_FLIGHT
#   queries, and a sweep opens as many channels as its DNS concurrency needs.
# - c-ares 1.34 keeps a query cache on every channel (up to an hour per answer) and
#   pycares offers no option to turn it off. A sweep asks for each domain once, so
#   the cache only grows, by about 2 KB per answer. A channel is therefore retired
#   after CHANNEL_QUERY_BUDGET queries: new queries go to a fresh channel and the old
#   one is destroyed, cache and all, once its last answer is in.

# Queries one channel carries at once. 256 answers of a few hundred bytes, at about
# 1.5 KiB each with kernel overhead, fit in the 416 KiB receive buffer that a stock
# Linux grants for a request above net.core.rmem_max (212992, doubled by the kernel).
CHANNEL_QUERIES_IN_FLIGHT = 256

# Receive buffer asked for on each channel's sockets; the kernel caps it at twice
# net.core.rmem_max.
CHANNEL_RECEIVE_BUFFER = 4 << 20

# Queries sent on one channel before it is retired, so its answer cache holds at most
# this many answers (about 10 MB at the 2 KB per answer measured above).
CHANNEL_QUERY_BUDGET = 5000

# Seconds between c-ares timeout checks while queries are in flight: a DNS timeout
# is noticed at most this late.
TIMEOUT_TICK = 0.05

# Address answers kept for reuse by later domains. Exchanges shared by many domains
# stay in the cache, because each use moves them to the young end; one-off names age out.
ADDRESS_CACHE_SIZE = 100_000


class _Slots:
    """A FIFO counting semaphore whose ``release`` takes constant time.

    asyncio.Semaphore in Python 3.11 leaves woken waiters in its queue until they
    run, so each release walks past them: with a thousand lookups waiting for a
    query slot, releasing cost more than the query. Here a release hands its slot
    straight to the oldest waiter.
    """

    def __init__(self, value: int) -> None:
        self._free = value
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The slot was handed over just before the cancellation: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise

    def release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _Channel:
    """One c-ares channel whose sockets the event loop watches, with its own bound on queries in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: dict) -> None:
        self._loop = loop
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.sent = 0
        self.in_flight = 0
        self.retired = False
        self._channel = pycares.Channel(sock_state_cb=self._socket_state, socket_receive_buffer_size=CHANNEL_RECEIVE_BUFFER, **options)

    def _socket_state(self, fd: int, readable: bool, writable: bool) -> None:
        if self._closed:
            # c-ares closes its sockets when the channel is destroyed, on pycares's
            # shutdown thread; the loop no longer watches them by then.
            return
        if readable and fd not in self._readers:
            self._loop.add_reader(fd, self._process, fd, pycares.ARES_SOCKET_BAD)
            self._readers.add(fd)
        elif not readable and fd in self._readers:
            self._loop.remove_reader(fd)
            self._readers.discard(fd)
        if writable and fd not in self._writers:
            self._loop.add_writer(fd, self._process, pycares.ARES_SOCKET_BAD, fd)
            self._writers.add(fd)
        elif not writable and fd in self._writers:
            self._loop.remove_writer(fd)
            self._writers.discard(fd)

    def _process(self, read_fd: int, write_fd: int) -> None:
        self._channel.process_fd(read_fd, write_fd)

    def _start_ticker(self) -> None:
        # c-ares handles its retransmissions and timeouts when processed with no
        # socket. A fixed tick while queries are in flight costs less than asking
        # ares_timeout() and moving a timer after every query and every answer.
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(TIMEOUT_TICK, self._on_tick)

    def _on_tick(self) -> None:
        self._timer = None
        self._channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        if self.in_flight:
            self._start_ticker()

    def query(self, name: str, qtype: int) -> "asyncio.Future[pycares.DNSResult]":
        future = self._loop.create_future()

        def done(result, errorno) -> None:
            self.in_flight -= 1
            if future.done():
                return
            if errorno is not None:
                future.set_exception(DNSError(errorno, pycares.errno.strerror(errorno)))
            else:
                future.set_result(result)

        self.sent += 1
        self.in_flight += 1
        try:
            self._channel.query(name, qtype, callback=done)
        except pycares.AresError as exc:
            # The callback may have run already (it decremented in_flight); the
            # error is the same either way.
            if not future.done():
                self.in_flight -= 1
                code = exc.args[0] if exc.args else pycares.errno.ARES_EFORMERR
                future.set_exception(DNSError(code, pycares.errno.strerror(code)))
        self._start_ticker()
        return future

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd in self._readers:
            self._loop.remove_reader(fd)
        for fd in self._writers:
            self._loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        self._channel.close()


class Resolver:
    """MX, A and AAAA lookups over a pool of c-ares channels, with a sweep-wide address cache.

    ``concurrency`` bounds the queries in flight over all channels. A query waits for a
    channel slot before it is sent, so c-ares starts its timeout only once the query is
    on the wire: a sweep that asks faster than its channels can carry slows down
    instead of recording timeouts the server never caused.
    """

    def __init__(self, servers: tuple[str, ...], timeout: float, retries: int, concurrency: int) -> None:
        self._options = {
            "timeout": timeout,
            "tries": retries + 1,
            # Never apply the system's search list: a sweep looks up exactly the names given.
            "flags": pycares.ARES_FLAG_NOSEARCH | pycares.ARES_FLAG_EDNS,
        }
        if servers:
            self._options["servers"] = list(servers)
        self._loop = asyncio.get_running_loop()
        self._slots = _Slots(concurrency)
        channels = -(-concurrency // CHANNEL_QUERIES_IN_FLIGHT)
        self._per_channel = min(concurrency, CHANNEL_QUERIES_IN_FLIGHT)
        self._channels = [_Channel(self._loop, self._options) for _ in range(channels)]
        self._next_channel = 0
        self._retired: set[_Channel] = set()
        self._address_cache: collections.OrderedDict[str, asyncio.Future[AddressAnswer]] = collections.OrderedDict()
        self.queries = 0
        self.channels_opened = channels
        log.debug("DNS: %d channels of %d queries each, servers %s", channels, self._per_channel, ", ".join(servers) or "system")

    async def close(self) -> None:
        for channel in (*self._channels, *self._retired):
            channel.close()
        self._retired.clear()

    def _channel_for_query(self) -> _Channel:
        # Round robin over the least busy channels: the global semaphore guarantees
        # that some channel has a free slot.
        count = len(self._channels)
        for step in range(count):
            index = (self._next_channel + step) % count
            channel = self._channels[index]
            if channel.in_flight < self._per_channel:
                self._next_channel = index + 1
                if channel.sent >= CHANNEL_QUERY_BUDGET:
                    channel = self._retire(index)
                return channel
        raise AssertionError("every DNS channel is full although a query slot was free")

    def _retire(self, index: int) -> _Channel:
        old = self._channels[index]
        old.retired = True
        if old.in_flight:
            self._retired.add(old)
        else:
            old.close()
        fresh = self._channels[index] = _Channel(self._loop, self._options)
        self.channels_opened += 1
        return fresh

    def _release(self, channel: _Channel) -> None:
        if channel.retired and not channel.in_flight:
            self._retired.discard(channel)
            channel.close()

    async def query(self, name: str, qtype: str, links_before: int = 0) -> list:
        """Return the matching answer records; ``[]`` means NODATA. Raise ``DnsLookupError`` otherwise.

        A reply that c-ares cannot parse is asked again before it is believed: c-ares
        1.34 fails every query waiting on a socket with EBADRESP when one datagram on
        it is garbage, so one broken or spoofed packet would otherwise mark unrelated
        domains as ``dns_bad_response``.
        """
        attempt = 1
        while True:
            try:
                return await self._query_once(name, qtype, links_before)
            except DnsLookupError as error:
                if not error.retryable or attempt >= BAD_RESPONSE_TRIES:
                    raise
                # A random pause, growing with each try, keeps the tries of the queries
                # hit together from meeting the next bad datagram together again.
                await asyncio.sleep(BAD_RESPONSE_PAUSE * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
                attempt += 1
                log.debug("%s %s: unparseable reply, asking again (try %d of %d)", qtype, name, attempt, BAD_RESPONSE_TRIES)

    async def _query_once(self, name: str, qtype: str, links_before: int) -> list:
        async with self._slots:
            self.queries += 1
            channel = self._channel_for_query()
            try:
                result = await channel.query(name, _record_type(qtype))
            except DNSError as exc:
                code = exc.args[0] if exc.args else None
                if code == pycares.errno.ARES_ENODATA:
                    return []
                reason = _ERRNO_REASONS.get(code, Reason.DNS_FAILURE)
                message = exc.args[1] if len(exc.args) > 1 else str(exc)
                raise DnsLookupError(reason, name, qtype, message, retryable=code == pycares.errno.ARES_EBADRESP) from None
            finally:
                self._release(channel)

        records, chain_end, links = select_answers(name, qtype, result.answer, links_before)
        if result.answer and not records and not any(r.type == pycares.QUERY_TYPE_CNAME for r in result.answer):
            raise DnsLookupError(Reason.DNS_BAD_RESPONSE, name, qtype, "answer holds records for another name")
        if not records and chain_end != name.lower().rstrip("."):
            # The answer stops at a CNAME without its target's records, as resolvers
            # that cap chains do: ask for the target (RFC 1034 section 3.6.2).
            return await self.query(chain_end, qtype, links)
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
            # With NXDOMAIN on one type and a timeout on the other, the timeout is the more telling error.
            errors.sort(key=lambda error: error.reason is Reason.NXDOMAIN)
            return AddressAnswer(error=errors[0])
        return AddressAnswer(error=DnsLookupError(Reason.NO_ADDRESS, name, "/".join(qtypes), "no address records"))

    async def addresses(self, name: str) -> AddressAnswer:
        """Look up the A and AAAA records of ``name``, once per sweep."""
        key = name.lower().rstrip(".")
        cache = self._address_cache
        future = cache.get(key)
        if future is None:
            future = asyncio.ensure_future(self._lookup_addresses(key))
            cache[key] = future
            if len(cache) > ADDRESS_CACHE_SIZE:
                oldest = next(iter(cache))
                if cache[oldest].done():
                    del cache[oldest]
        else:
            cache.move_to_end(key)
        return await asyncio.shield(future)
