"""A small, fast SMTP responder for the benchmark lab: many addresses, one process.

Each process listens on a list of loopback addresses (one port for all) and answers
every connection the same minimal way: a 220 banner after ``--greeting-delay``
seconds, 250 to EHLO and HELO, 221 to QUIT, each reply after ``--reply-delay``
seconds. Addresses can be given other modes: ``busy`` answers 421 at once and
closes, ``reject`` answers 554, ``silent`` accepts and never speaks.

It is deliberately not the lab's SmtpHost: that one scripts dozens of behaviours and
costs more CPU per session than the scanner being measured. The current number of
open connections is written to one slot of a shared array, so the benchmark can
sample handshakes in flight across all responder processes.

    python benchmarks/responder.py HOSTS_FILE PORT --slot N --stats FILE
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import resource
import signal
import struct
import sys

import uvloop

BANNER = b"220 %s ESMTP bench\r\n"
EHLO_REPLY = b"250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n"
HELO_REPLY = b"250 %s\r\n"
QUIT_REPLY = b"221 2.0.0 bye\r\n"
UNKNOWN_REPLY = b"502 5.5.2 command not recognized\r\n"
BUSY_REPLY = b"421 4.7.0 too many connections, try later\r\n"
REJECT_REPLY = b"554 5.7.1 no service here\r\n"

# One 8-byte counter per responder process in the shared stats file.
SLOT_BYTES = 8
MAX_SLOTS = 64

# Connections are closed by the server after this many seconds, so a scanner that
# hangs up uncleanly never leaves a responder with piles of idle sockets.
IDLE_LIMIT = 120.0


class Counters:
    def __init__(self, path: str | None, slot: int) -> None:
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self._map = None
        self._offset = slot * SLOT_BYTES
        if path:
            fd = os.open(path, os.O_RDWR)
            self._map = mmap.mmap(fd, SLOT_BYTES * MAX_SLOTS)
            os.close(fd)

    def change(self, delta: int) -> None:
        self.open += delta
        if delta > 0:
            self.accepted += 1
            self.peak = max(self.peak, self.open)
        if self._map is not None:
            struct.pack_into("<q", self._map, self._offset, self.open)


class Session(asyncio.Protocol):
    def __init__(self, hostname: bytes, mode: str, greeting_delay: float, reply_delay: float, counters: Counters) -> None:
        self.hostname = hostname
        self.mode = mode
        self.greeting_delay = greeting_delay
        self.reply_delay = reply_delay
        self.counters = counters
        self.buffer = b""
        self.transport = None
        self.loop = asyncio.get_running_loop()
        self.idle = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.counters.change(+1)
        self.idle = self.loop.call_later(IDLE_LIMIT, transport.abort)
        if self.mode == "silent":
            return
        if self.mode == "busy":
            self._send(BUSY_REPLY, 0.0, close=True)
        elif self.mode == "reject":
            self._send(REJECT_REPLY, 0.0, close=True)
        else:
            self._send(BANNER % self.hostname, self.greeting_delay)

    def _send(self, data: bytes, delay: float, close: bool = False) -> None:
        if delay > 0:
            self.loop.call_later(delay, self._write, data, close)
        else:
            self._write(data, close)

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            verb = line[:4].upper()
            if verb == b"EHLO":
                self._send(EHLO_REPLY % self.hostname, self.reply_delay)
            elif verb == b"HELO":
                self._send(HELO_REPLY % self.hostname, self.reply_delay)
            elif verb == b"QUIT":
                self._send(QUIT_REPLY, self.reply_delay, close=True)
            else:
                self._send(UNKNOWN_REPLY, self.reply_delay)
        if len(self.buffer) > 4096:
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.counters.change(-1)
        if self.idle is not None:
            self.idle.cancel()


async def serve(hosts: list[tuple[str, str, str]], port: int, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters(args.stats, args.slot)
    servers = []
    for address, hostname, mode in hosts:
        factory = lambda h=hostname.encode(), m=mode: Session(h, m, args.greeting_delay, args.reply_delay, counters)
        servers.append(await loop.create_server(factory, address, port, backlog=1024, reuse_address=True))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {len(servers)}", flush=True)
    # Stop by itself after --lifetime seconds, in case the benchmark that started it died.
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.lifetime)
    except asyncio.TimeoutError:
        pass
    for server in servers:
        server.close()
    print(f"accepted {counters.accepted} peak {counters.peak}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Minimal SMTP responder on many loopback addresses.")
    parser.add_argument("hosts_file", help="lines of ADDRESS HOSTNAME MODE, MODE one of ok, busy, reject, silent")
    parser.add_argument("port", type=int)
    parser.add_argument("--greeting-delay", type=float, default=0.0, help="seconds before the 220 banner")
    parser.add_argument("--reply-delay", type=float, default=0.0, help="seconds before each reply to a command")
    parser.add_argument("--stats", help="shared file whose slot --slot holds the open connection count")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=3600.0, help="seconds after which the responder exits by itself")
    args = parser.parse_args()
    hosts = []
    with open(args.hosts_file) as handle:
        for line in handle:
            address, hostname, mode = line.split()
            if not address.startswith("127."):
                raise SystemExit(f"{address}: the responder binds only loopback addresses")
            hosts.append((address, hostname, mode))
    # One listening socket per address plus the open connections: raise the soft
    # open-files limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(hosts, args.port, args))


if __name__ == "__main__":
    main()
