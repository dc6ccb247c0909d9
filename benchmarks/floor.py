"""The floor client: the least work that does mxscan's lookups and handshake.

uvloop, aiodns and raw asyncio streams. Per domain: MX; per exchange, once per run:
A and AAAA; per address, once per run, as mxscan does: connect, read the banner, EHLO,
QUIT. It keeps no records and writes only counts, so its domains per second are the
ceiling that mxscan's pipeline, records and JSON are measured against.

    python benchmarks/floor.py DOMAINS_FILE --resolver 127.0.0.1:5300 --port 2525
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time

import aiodns
import uvloop

# The same bound on DNS queries in flight as mxscan's default, so that neither client
# loses answers to a full socket buffer.
DNS_IN_FLIGHT = 256


async def read_reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3])


class Floor:
    def __init__(self, resolver: aiodns.DNSResolver, port: int, timeout: float) -> None:
        self.resolver = resolver
        self.port = port
        self.timeout = timeout
        self.dns_slots = asyncio.Semaphore(DNS_IN_FLIGHT)
        self.addresses: dict[str, asyncio.Future] = {}
        self.probes: dict[str, asyncio.Future] = {}
        self.counts: collections.Counter = collections.Counter()

    async def query(self, name: str, qtype: str):
        async with self.dns_slots:
            return await self.resolver.query_dns(name, qtype)

    async def lookup(self, name: str) -> list[str]:
        results = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"), return_exceptions=True)
        found = []
        for result in results:
            if not isinstance(result, BaseException):
                found += [record.data.addr for record in result.answer if hasattr(record.data, "addr")]
        return found

    async def handshake(self, address: str) -> str:
        # One timeout per phase (connect, banner, EHLO, QUIT), as mxscan's are.
        timeout = self.timeout
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(address, self.port), timeout)
            try:
                if await asyncio.wait_for(read_reply(reader), timeout) != 220:
                    return "rejected"
                writer.write(b"EHLO floor.bench.test\r\n")
                if await asyncio.wait_for(read_reply(reader), timeout) != 250:
                    return "rejected"
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(read_reply(reader), timeout)
                return "reachable"
            finally:
                writer.close()
        except TimeoutError:
            return "timeout"
        except (OSError, ConnectionError, ValueError):
            return "failed"

    def once(self, table: dict, key: str, factory) -> asyncio.Future:
        future = table.get(key)
        if future is None:
            future = table[key] = asyncio.ensure_future(factory(key))
        return future

    async def domain(self, name: str) -> str:
        try:
            answer = await self.query(name, "MX")
        except aiodns.error.DNSError as exc:
            return "nxdomain" if exc.args[0] == aiodns.error.ARES_ENOTFOUND else "dns_error"
        exchanges = sorted((record.data.priority, record.data.exchange) for record in answer.answer)
        if not exchanges or exchanges[0][1] in ("", "."):
            return "null_mx"
        outcome = "no_address"
        for _, exchange in exchanges:
            for address in await self.once(self.addresses, exchange, self.lookup):
                outcome = await self.once(self.probes, address, self.handshake)
                if outcome == "reachable":
                    return outcome
        return outcome


async def run(args: argparse.Namespace) -> dict:
    resolver = aiodns.DNSResolver(nameservers=[args.resolver], timeout=args.dns_timeout, tries=2)
    floor = Floor(resolver, args.port, args.timeout)
    queue: asyncio.Queue = asyncio.Queue(maxsize=args.concurrency * 2)

    async def worker() -> None:
        while (name := await queue.get()) is not None:
            floor.counts[await floor.domain(name)] += 1

    started = time.monotonic()
    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    with open(args.domains_file) as handle:
        for count, line in enumerate(handle):
            if args.limit and count >= args.limit:
                break
            await queue.put(line.strip())
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - started
    await resolver.close()
    return {"client": "floor", "domains": sum(floor.counts.values()), "seconds": round(elapsed, 2), "counts": dict(floor.counts), "probes": len(floor.probes)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Floor client: lookups and handshakes, no records.")
    parser.add_argument("domains_file")
    parser.add_argument("--resolver", required=True, help="lab resolver as IP:PORT")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each phase: connect, banner, EHLO reply, QUIT reply")
    parser.add_argument("--dns-timeout", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=0, help="sweep only the first N domains")
    args = parser.parse_args()
    if not args.resolver.startswith("127."):
        sys.exit("--resolver must be a loopback address")
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
