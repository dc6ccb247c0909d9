"""Generate the benchmark lab: a domain list, an NSD zone and the responders' host lists.

The shape follows mail on the internet. A few big providers serve a large share of
domains (Zipf weights over BIG_HOSTS addresses), and thousands of small hosts serve a
few domains each. Some addresses misbehave: 421 busy, 554 reject, silent, or nothing
listening. Some domains publish a null MX and some do not exist. Everything lives
under bench.test. and on 127.0.0.0/8. The same seed gives the same lab.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path

ORIGIN = "bench.test"
BIG_HOSTS = 10
SMALL_HOSTS = 15_000
# Misbehaving addresses, each shared by many domains.
BUSY_HOSTS = 20
REJECT_HOSTS = 20
SILENT_HOSTS = 10
CLOSED_HOSTS = 10

# Share of domains by kind; the rest go to small hosts.
SHARES = {
    "big": 0.45,
    "busy": 0.01,
    "reject": 0.01,
    "silent": 0.002,
    "closed": 0.003,
    "null_mx": 0.015,
    "nxdomain": 0.01,
}

SEED = 25


@dataclasses.dataclass(frozen=True)
class Host:
    address: str
    name: str
    mode: str  # ok, busy, reject, silent, closed (nothing listens)


# Addresses per /8 block of the lab: 127.B.x.y with x in 0..249 and y in 1..250, so
# no address ends in .0 or .255.
BLOCK_SIZE = 250 * 250


def _address(block: int, index: int) -> str:
    if index >= BLOCK_SIZE:
        raise ValueError(f"at most {BLOCK_SIZE} hosts of one kind, got index {index}")
    return f"127.{block}.{index // 250}.{index % 250 + 1}"


def make_hosts(small_hosts: int = SMALL_HOSTS) -> dict[str, list[Host]]:
    hosts = {
        "big": [Host(_address(1, i), f"mx{i}.big", "ok") for i in range(BIG_HOSTS)],
        "small": [Host(_address(2, i), f"mx{i}.small", "ok") for i in range(small_hosts)],
        "busy": [Host(_address(3, i), f"mx{i}.busy", "busy") for i in range(BUSY_HOSTS)],
        "reject": [Host(_address(4, i), f"mx{i}.reject", "reject") for i in range(REJECT_HOSTS)],
        "silent": [Host(_address(5, i), f"mx{i}.silent", "silent") for i in range(SILENT_HOSTS)],
        "closed": [Host(_address(6, i), f"mx{i}.closed", "closed") for i in range(CLOSED_HOSTS)],
    }
    return hosts


def generate(directory: Path, domains: int, responders: int, small_hosts: int = SMALL_HOSTS, big_share: float = SHARES["big"], seed: int = SEED) -> dict:
    """Write domains.txt, bench.test.zone and hosts-K.txt under ``directory``; return the manifest.

    ``big_share`` is the share of domains served by the big providers.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    hosts = make_hosts(small_hosts)
    big_weights = [1.0 / (rank + 1) for rank in range(BIG_HOSTS)]
    shares = {**SHARES, "big": big_share}
    kinds = list(shares) + ["small"]
    weights = list(shares.values()) + [1.0 - sum(shares.values())]
    counts: dict[str, int] = {kind: 0 for kind in kinds}
    # Small hosts are dealt out in a shuffled order, one domain each before any gets a
    # second, so a lab with more small hosts than small domains gives each its own.
    shuffled_small = list(hosts["small"])
    rng.shuffle(shuffled_small)
    small_hosts_cycle = itertools.cycle(shuffled_small)

    zone_path = directory / f"{ORIGIN}.zone"
    with zone_path.open("w") as zone, (directory / "domains.txt").open("w") as listing:
        zone.write(f"$ORIGIN {ORIGIN}.\n$TTL 3600\n")
        zone.write("@ IN SOA ns1 hostmaster 1 3600 600 86400 3600\n@ IN NS ns1\nns1 IN A 127.0.0.1\n")
        for group in hosts.values():
            for host in group:
                zone.write(f"{host.name} IN A {host.address}\n")
        for index in range(domains):
            label = f"d{index:07}"
            kind = rng.choices(kinds, weights)[0]
            counts[kind] += 1
            listing.write(f"{label}.{ORIGIN}\n")
            if kind == "nxdomain":
                continue
            if kind == "null_mx":
                zone.write(f"{label} IN MX 0 .\n")
                continue
            if kind == "big":
                host = rng.choices(hosts["big"], big_weights)[0]
            elif kind == "small":
                host = next(small_hosts_cycle)
            else:
                host = rng.choice(hosts[kind])
            zone.write(f"{label} IN MX 10 {host.name}\n")

    listening = [host for group in hosts.values() for host in group if host.mode != "closed"]
    files = []
    for part in range(responders):
        path = directory / f"hosts-{part}.txt"
        with path.open("w") as handle:
            for host in listening[part::responders]:
                handle.write(f"{host.address} {host.name}.{ORIGIN} {host.mode}\n")
        files.append(str(path))

    manifest = {
        "domains": domains,
        "kinds": counts,
        "addresses": sum(len(group) for group in hosts.values()),
        "zone": str(zone_path),
        "domains_file": str(directory / "domains.txt"),
        "host_files": files,
        "small_hosts": small_hosts,
        "big_share": big_share,
        "seed": seed,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Generate the benchmark lab files.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--responders", type=int, default=2)
    parser.add_argument("--small-hosts", type=int, default=SMALL_HOSTS)
    parser.add_argument("--big-share", type=float, default=SHARES["big"])
    args = parser.parse_args()
    print(json.dumps(generate(args.directory, args.domains, args.responders, args.small_hosts, args.big_share), indent=2))
