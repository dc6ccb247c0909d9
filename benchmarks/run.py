"""Run the sweep benchmark: mxscan, the floor client and a sysadmin's script, side by side.

    unshare --net sh -c 'ip link set lo up && .venv/bin/python benchmarks/run.py'

Run it as root inside a network namespace that has only loopback (the command above),
from a clone with the venv of the README and Debian's nsd package. It generates a lab
(benchmarks/genlab.py), serves its zone from NSD on 127.0.53.53 and its mail hosts from
responder processes (benchmarks/responder.py), then measures each client as a child
process: wall time, CPU time (user + system) and peak resident memory from wait4().
``--smoke`` runs a small lab in well under 30 seconds, for CI. The markdown record is
printed and, with ``--record FILE``, written to FILE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import genlab  # noqa: E402
from responder import MAX_SLOTS, SLOT_BYTES  # noqa: E402

NSD_SCRIPT = ROOT / "tests" / "realservers" / "nsd.sh"
DNS_ADDRESS = "127.0.53.53"
DNS_PORT = 5353
SMTP_PORT = 2525
RESPONDERS = 2

# Simulated internet: seconds before the banner and before each reply.
GREETING_DELAY = 0.5
REPLY_DELAY = 0.1

# Every child stops by itself after this many seconds, whatever happens to the runner.
CHILD_LIFETIME = 3600.0


@dataclasses.dataclass
class Measure:
    label: str
    client: str
    domains: int
    wall: float
    cpu: float
    peak_rss_mb: float
    peak_in_flight: int = 0
    counts: dict = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.domains / self.wall if self.wall else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.domains * 1000 if self.domains else 0.0


class InFlightSampler:
    """Samples the sum of the responders' open connections every 50 ms, keeping the peak."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "InFlightSampler":
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with self.path.open("rb") as handle:
            view = mmap.mmap(handle.fileno(), SLOT_BYTES * MAX_SLOTS, access=mmap.ACCESS_READ)
            while not self._stop.wait(0.05):
                total = sum(int.from_bytes(view[i * SLOT_BYTES:(i + 1) * SLOT_BYTES], "little", signed=True) for i in range(RESPONDERS))
                self.peak = max(self.peak, total)
            view.close()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(label: str, client: str, command: list[str], domains: int, sampler: InFlightSampler | None = None, stdout_path: Path | None = None) -> Measure:
    out = stdout_path.open("wb") if stdout_path else subprocess.PIPE
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    if sampler:
        sampler.__enter__()
    try:
        stdout, stderr = process.communicate(timeout=CHILD_LIFETIME)
    finally:
        if sampler:
            sampler.__exit__()
    wall = time.monotonic() - started
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN deltas, so the
    # runner measures each child alone by running one at a time.
    if process.returncode != 0:
        raise SystemExit(f"{label}: {client} exited with {process.returncode}:\n{stderr.decode()[-3000:]}")
    usage = _child_usage.pop(process.pid, None)
    counts = {}
    if client != "mxscan" and stdout:
        report = json.loads(stdout.decode().splitlines()[-1])
        counts = report["counts"]
    return Measure(label, client, domains, wall, usage[0] if usage else float("nan"), usage[1] if usage else float("nan"), sampler.peak if sampler else 0, counts)


_child_usage: dict[int, tuple[float, float]] = {}


def _patch_popen_wait() -> None:
    # Popen reaps with waitpid(); wait4() returns the same status plus the child's own
    # rusage (CPU and peak RSS), which is what each row of the record reports.
    original = subprocess.Popen._try_wait

    def try_wait(self, wait_flags):
        try:
            pid, status, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return original(self, wait_flags)
        if pid == self.pid:
            _child_usage[pid] = (usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
        return (pid, status)

    subprocess.Popen._try_wait = try_wait


class Lab:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state = workdir / "nsd"
        self.stats = workdir / "inflight.bin"
        self.responders: list[subprocess.Popen] = []
        self.nsd_started = False

    def start_dns(self, zone: Path) -> None:
        self.state.mkdir(exist_ok=True)
        env = {**os.environ, "REALSERVERS_START_TIMEOUT": "600"}
        subprocess.run(["bash", str(NSD_SCRIPT), "start", str(self.state), DNS_ADDRESS, str(DNS_PORT)], check=True, env=env, stdout=subprocess.DEVNULL)
        self.nsd_started = True
        self.load_zone(zone)

    def load_zone(self, zone: Path) -> None:
        env = {**os.environ, "REALSERVERS_START_TIMEOUT": "600"}
        subprocess.run(["bash", str(NSD_SCRIPT), "load-zone", str(self.state), genlab.ORIGIN, str(zone)], check=True, env=env)

    def start_smtp(self, host_files: list[str], greeting_delay: float, reply_delay: float) -> None:
        self.stop_smtp()
        self.stats.write_bytes(bytes(SLOT_BYTES * MAX_SLOTS))
        for slot, path in enumerate(host_files):
            process = subprocess.Popen(
                [sys.executable, str(HERE / "responder.py"), path, str(SMTP_PORT), "--greeting-delay", str(greeting_delay),
                 "--reply-delay", str(reply_delay), "--stats", str(self.stats), "--slot", str(slot), "--lifetime", str(CHILD_LIFETIME)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            self.responders.append(process)
        for process in self.responders:
            line = process.stdout.readline()
            if not line.startswith(b"ready"):
                raise SystemExit("a responder failed to start")

    def stop_smtp(self) -> None:
        for process in self.responders:
            process.terminate()
        for process in self.responders:
            process.wait(timeout=30)
        self.responders.clear()

    def stop(self) -> None:
        self.stop_smtp()
        if self.nsd_started:
            subprocess.run(["bash", str(NSD_SCRIPT), "stop", str(self.state)], check=False)


# Seconds for each phase of a handshake, the same for every client.
PHASE_TIMEOUT = 5.0


def mxscan_config(workdir: Path, domains_file: str, name: str) -> Path:
    config = {
        "domains_file": domains_file,
        "resolvers": [f"{DNS_ADDRESS}:{DNS_PORT}"],
        "smtp": {"port": SMTP_PORT, "ehlo_name": "mxscan.bench.test"},
        "policy": {"allow_private": True},
        "tls": {"starttls": False},
        "timeouts": {"connect": PHASE_TIMEOUT, "banner": PHASE_TIMEOUT, "reply": PHASE_TIMEOUT, "quit": PHASE_TIMEOUT, "host": 4 * PHASE_TIMEOUT},
        "dns": {"timeout": 5.0, "retries": 1},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mxscan_command(config: Path, output: Path, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "scanner", "-q", "scan", str(config), "-o", str(output), "--concurrency", str(concurrency)]


def floor_command(domains_file: str, concurrency: int, limit: int = 0) -> list[str]:
    return [sys.executable, str(HERE / "floor.py"), domains_file, "--resolver", f"{DNS_ADDRESS}:{DNS_PORT}", "--port", str(SMTP_PORT),
            "--concurrency", str(concurrency), "--timeout", str(PHASE_TIMEOUT), "--limit", str(limit)]


def sysadmin_command(domains_file: str, limit: int, threads: int = 64) -> list[str]:
    return [sys.executable, str(HERE / "sysadmin.py"), domains_file, "--resolver", f"{DNS_ADDRESS}:{DNS_PORT}", "--port", str(SMTP_PORT),
            "--threads", str(threads), "--limit", str(limit), "--timeout", str(PHASE_TIMEOUT)]


def statuses(path: Path) -> dict[str, tuple[str, str | None]]:
    found = {}
    with path.open("rb") as handle:
        for line in handle:
            record = json.loads(line)
            found[record["query_name"] or record["domain"]] = (record["status"], record["reason"])
    return found


def compare(label: str, high: Path, low: Path) -> tuple[str, int, int]:
    first, second = statuses(high), statuses(low)
    keys = first.keys() & second.keys()
    differ = [key for key in keys if first[key] != second[key]]
    missing = len(first.keys() ^ second.keys())
    return label, len(differ) + missing, len(keys)


def subset(source: str, target: Path, count: int) -> str:
    with open(source) as handle, target.open("w") as out:
        for index, line in enumerate(handle):
            if index >= count:
                break
            out.write(line)
    return str(target)


def render(rows: list[Measure], comparisons: list[tuple[str, int, int]], args: argparse.Namespace, manifest: dict) -> str:
    lines = [
        f"Machine: {platform.node()} , {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}",
        f"Lab: {manifest['domains']} domains, {manifest['addresses']} addresses, kinds {manifest['kinds']}",
        f"Command: {' '.join(sys.argv)}",
        "",
        "| run | client | domains | seconds | domains/s | CPU s / 1,000 domains | peak RSS MB | peak handshakes in flight |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.label} | {row.client} | {row.domains} | {row.wall:.1f} | {row.rate:.0f} | {row.cpu_per_1000:.2f} | {row.peak_rss_mb:.0f} | {row.peak_in_flight or ''} |")
    if comparisons:
        lines += ["", "| comparison | domains whose status or reason differ | domains compared |", "|---|---:|---:|"]
        for label, differ, compared in comparisons:
            lines.append(f"| {label} | {differ} | {compared} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="add a 1,000,000-domain run for peak memory")
    parser.add_argument("--smoke", action="store_true", help="a small lab and short runs, for CI (< 30 s)")
    parser.add_argument("--concurrency", type=int, default=2000, help="domains in flight for the zero-delay runs")
    parser.add_argument("--delay-concurrency", default="500,2000,5000,10000", help="comma-separated concurrencies for the runs with simulated delay")
    parser.add_argument("--sysadmin-domains", type=int, default=10_000, help="domains for the sysadmin script (it is slow)")
    parser.add_argument("--workdir", type=Path, help="keep the lab and outputs here instead of a temporary folder")
    parser.add_argument("--record", type=Path, help="also write the markdown record to this file")
    args = parser.parse_args()
    if shutil.which("nsd") is None and not Path("/usr/sbin/nsd").exists():
        raise SystemExit("NSD is not installed: apt-get install nsd")
    _patch_popen_wait()

    global PHASE_TIMEOUT
    small_hosts = genlab.SMALL_HOSTS
    if args.smoke:
        args.domains, args.million, args.concurrency, args.sysadmin_domains = 1000, False, 200, 200
        small_hosts = 200
        PHASE_TIMEOUT = 1.0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mxscan-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = genlab.generate(workdir / "lab", args.domains, RESPONDERS, small_hosts)
    domains_file = manifest["domains_file"]
    lab = Lab(workdir)
    rows: list[Measure] = []
    comparisons = []
    sampler = InFlightSampler(lab.stats)
    try:
        lab.start_dns(Path(manifest["zone"]))
        config = mxscan_config(workdir, domains_file, "sweep")
        n = args.domains

        # Zero delay: throughput against the floor and the thread-pool script.
        lab.start_smtp(manifest["host_files"], 0.0, 0.0)
        high_zero = workdir / "zero-high.jsonl"
        rows.append(measure("no delay", "mxscan", mxscan_command(config, high_zero, args.concurrency), n, sampler))
        rows.append(measure("no delay", "floor", floor_command(domains_file, args.concurrency), n, sampler))
        rows.append(measure("no delay", "sysadmin (64 threads)", sysadmin_command(domains_file, args.sysadmin_domains), min(n, args.sysadmin_domains), sampler))
        low_zero = workdir / "zero-20.jsonl"
        rows.append(measure("no delay", "mxscan, concurrency 20", mxscan_command(config, low_zero, 20), n, sampler))
        comparisons.append(compare(f"no delay: concurrency {args.concurrency} against 20", high_zero, low_zero))

        if args.smoke:
            return _finish(rows, comparisons, args, manifest, workdir)

        # Simulated internet: greeting and reply delays.
        lab.start_smtp(manifest["host_files"], GREETING_DELAY, REPLY_DELAY)
        concurrencies = [int(value) for value in args.delay_concurrency.split(",")]
        for concurrency in concurrencies:
            output = workdir / f"delay-{concurrency}.jsonl"
            rows.append(measure(f"delay {GREETING_DELAY}+{REPLY_DELAY} s", f"mxscan, concurrency {concurrency}", mxscan_command(config, output, concurrency), n, sampler))
        top = max(concurrencies)
        rows.append(measure(f"delay {GREETING_DELAY}+{REPLY_DELAY} s", f"floor, concurrency {top}", floor_command(domains_file, top), n, sampler))
        part = min(n, 5000)
        part_file = subset(domains_file, workdir / "part.txt", part)
        part_config = mxscan_config(workdir, part_file, "part")
        part_high, part_low = workdir / "part-high.jsonl", workdir / "part-20.jsonl"
        rows.append(measure(f"delay, first {part}", f"mxscan, concurrency {top}", mxscan_command(part_config, part_high, top), part, sampler))
        rows.append(measure(f"delay, first {part}", "mxscan, concurrency 20", mxscan_command(part_config, part_low, 20), part, sampler))
        comparisons.append(compare(f"delay, first {part}: concurrency {top} against 20", part_high, part_low))

        if args.million:
            lab.stop_smtp()
            big = genlab.generate(workdir / "lab-1m", 1_000_000, RESPONDERS, small_hosts)
            lab.load_zone(Path(big["zone"]))
            lab.start_smtp(big["host_files"], 0.0, 0.0)
            big_config = mxscan_config(workdir, big["domains_file"], "million")
            rows.append(measure("no delay, 1,000,000", "mxscan", mxscan_command(big_config, Path("/dev/null"), args.concurrency), 1_000_000, sampler))
    finally:
        lab.stop()
    _finish(rows, comparisons, args, manifest, workdir)


def _finish(rows: list[Measure], comparisons: list, args: argparse.Namespace, manifest: dict, workdir: Path) -> None:
    record = render(rows, comparisons, args, manifest)
    print(record)
    if args.record:
        args.record.write_text(record)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
