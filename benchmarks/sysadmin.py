"""The script a sysadmin would write: dnspython and smtplib in a thread pool.

Per domain, in one of ``--threads`` threads: look up MX, take the best exchange,
look up its address, connect with smtplib, EHLO, QUIT. No cache, no shared state:
each domain opens its own connection, as a first script does. The resolver and the
EHLO name are explicit, so nothing reads /etc/resolv.conf or asks for the host's FQDN.

    python benchmarks/sysadmin.py DOMAINS_FILE --resolver 127.0.0.1:5300 --port 2525
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import smtplib
import sys
import time

import dns.exception
import dns.resolver


def make_resolver(text: str) -> dns.resolver.Resolver:
    address, _, port = text.partition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = int(port or 53)
    resolver.lifetime = 5.0
    return resolver


def check(name: str, resolver: dns.resolver.Resolver, port: int, timeout: float) -> str:
    try:
        answer = resolver.resolve(name, "MX")
    except dns.resolver.NXDOMAIN:
        return "nxdomain"
    except (dns.resolver.NoAnswer, dns.exception.DNSException):
        return "dns_error"
    best = min(answer, key=lambda record: record.preference)
    if str(best.exchange) == ".":
        return "null_mx"
    try:
        address = resolver.resolve(best.exchange, "A")[0].address
    except dns.exception.DNSException:
        return "no_address"
    try:
        with smtplib.SMTP(address, port, local_hostname="sysadmin.bench.test", timeout=timeout) as smtp:
            code, _ = smtp.ehlo()
            return "reachable" if code == 250 else "rejected"
    except smtplib.SMTPConnectError:
        return "rejected"
    except (OSError, smtplib.SMTPException):
        return "failed"


def main() -> None:
    parser = argparse.ArgumentParser(description="A sysadmin's sweep script: dnspython and smtplib in threads.")
    parser.add_argument("domains_file")
    parser.add_argument("--resolver", required=True, help="lab resolver as IP:PORT")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=0, help="sweep only the first N domains")
    args = parser.parse_args()
    if not args.resolver.startswith("127."):
        sys.exit("--resolver must be a loopback address")

    with open(args.domains_file) as handle:
        names = [line.strip() for line in handle if line.strip()]
    if args.limit:
        names = names[: args.limit]
    counts: collections.Counter = collections.Counter()
    started = time.monotonic()
    # One resolver per thread: dnspython's Resolver is not documented as thread-safe.
    resolvers: dict[int, dns.resolver.Resolver] = {}

    def job(name: str) -> str:
        import threading

        resolver = resolvers.setdefault(threading.get_ident(), make_resolver(args.resolver))
        return check(name, resolver, args.port, args.timeout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.threads) as pool:
        for outcome in pool.map(job, names, chunksize=64):
            counts[outcome] += 1
    elapsed = time.monotonic() - started
    print(json.dumps({"client": "sysadmin", "domains": len(names), "seconds": round(elapsed, 2), "counts": dict(counts)}))


if __name__ == "__main__":
    main()
