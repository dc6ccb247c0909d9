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
import signal
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
# Responder processes; each serves a quarter of the addresses, well under the
# open-files limit of one process.
RESPONDERS = 4

# Simulated internet: seconds before the banner and before each reply. A handshake
# (banner, EHLO, QUIT) then takes about 7 s, as with a server that delays its
# greeting to catch clients that talk first (Postfix postscreen waits 6 s).
GREETING_DELAY = 5.0
REPLY_DELAY = 1.0

# The delay lab: most domains on their own small host, so that thousands of
# handshakes can be in flight while each address is probed once.
DELAY_SMALL_HOSTS = 60_000
DELAY_BIG_SHARE = 0.10

# Seconds after which a responder exits by itself (even if the runner died) and after
# which the runner kills a client that has not finished.
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
    # Handshakes in flight, averaged over the samples taken while at least one was open.
    mean_in_flight: float = 0.0
    # The same average over the middle 60 % of those samples: the steady state,
    # without the ramp at the start and the tail of slow hosts at the end.
    steady_in_flight: float = 0.0
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
        self.busy: list[int] = []
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
                if total > 0:
                    self.busy.append(total)
            view.close()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.busy) / len(self.busy) if self.busy else 0.0

    @property
    def steady(self) -> float:
        middle = self.busy[len(self.busy) // 5 : len(self.busy) * 4 // 5]
        return sum(middle) / len(middle) if middle else 0.0


def measure(label: str, client: str, command: list[str], domains: int, sampler: InFlightSampler | None = None, stdout_path: Path | None = None) -> Measure:
    out = stdout_path.open("wb") if stdout_path else subprocess.PIPE
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    if sampler:
        sampler.__enter__()
    try:
        stdout, stderr = process.communicate(timeout=CHILD_LIFETIME)
    except BaseException:
        process.kill()
        process.wait()
        raise
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
    cpu, peak_rss = usage if usage else (float("nan"), float("nan"))
    peak, mean, steady = (sampler.peak, sampler.mean, sampler.steady) if sampler else (0, 0.0, 0.0)
    return Measure(label, client, domains, wall, cpu, peak_rss, peak, mean, steady, counts)


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


# Seconds for each phase of a handshake, the same for every client; above the
# simulated greeting delay.
PHASE_TIMEOUT = 10.0


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


def profile_mxscan(config: Path, workdir: Path, concurrency: int, domains: int, sampler: InFlightSampler) -> None:
    import pstats

    stats_file = workdir / "mxscan.prof"
    command = mxscan_command(config, workdir / "profiled.jsonl", concurrency)
    command[1:1] = ["-m", "cProfile", "-o", str(stats_file)]
    row = measure("no delay, under cProfile", "mxscan", command, domains, sampler)
    print(f"{row.rate:.0f} domains/s under the profiler, {row.cpu_per_1000:.2f} CPU s per 1,000 domains")
    pstats.Stats(str(stats_file)).sort_stats("tottime").print_stats(30)


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


def render(rows: list[Measure], comparisons: list[tuple[str, int, int]], labs: dict[str, dict]) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, {platform.platform()}",
        f"Command: {' '.join(sys.argv)}",
        "",
    ]
    for name, manifest in labs.items():
        lines.append(f"Lab {name}: {manifest['domains']} domains, {manifest['addresses']} addresses ({manifest['small_hosts']} small hosts), domains by kind {manifest['kinds']}")
    lines += [
        "",
        "| run | client | domains | seconds | domains/s | CPU s / 1,000 domains | peak RSS MB | handshakes in flight: peak | mean | steady |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {row.client} | {row.domains} | {row.wall:.1f} | {row.rate:.0f} | {row.cpu_per_1000:.2f} | {row.peak_rss_mb:.0f} | {row.peak_in_flight} | {row.mean_in_flight:.0f} | {row.steady_in_flight:.0f} |"
        )
    if comparisons:
        lines += ["", "| comparison | domains whose status or reason differ | domains compared |", "|---|---:|---:|"]
        for label, differ, compared in comparisons:
            lines.append(f"| {label} | {differ} | {compared} |")
    return "\n".join(lines) + "\n"


SCENARIOS = ("zero", "delay", "truth", "million")


def _exit_on_signal(signum: int, frame) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--scenarios", default="zero,delay,truth,million", help=f"comma-separated, from {', '.join(SCENARIOS)}")
    parser.add_argument("--smoke", action="store_true", help="a small lab and short zero-delay runs, for CI (< 30 s)")
    parser.add_argument("--concurrency", type=int, default=2000, help="domains in flight for the zero-delay runs")
    parser.add_argument("--delay-concurrency", default="1000,2500,5000,10000", help="comma-separated concurrencies for the runs with simulated delay")
    parser.add_argument("--delay-domains", type=int, default=60_000, help="domains of the delay lab swept at each concurrency")
    parser.add_argument("--sysadmin-domains", type=int, default=10_000, help="domains for the sysadmin script (it is slow)")
    parser.add_argument("--workdir", type=Path, help="keep the lab and outputs here instead of a temporary folder")
    parser.add_argument("--record", type=Path, help="also write the markdown record to this file")
    parser.add_argument("--profile", action="store_true", help="only run mxscan at zero delay under cProfile and print where its time goes")
    args = parser.parse_args()
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; valid: {', '.join(SCENARIOS)}")
    if not Path("/usr/sbin/nsd").exists() and shutil.which("nsd") is None:
        raise SystemExit("NSD is not installed: apt-get install nsd")
    _patch_popen_wait()
    # Stop cleanly on SIGTERM and SIGINT, even when started in the background (where
    # a shell ignores SIGINT): the lab's servers are stopped in the finally below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)

    global PHASE_TIMEOUT
    if args.smoke:
        args.domains, args.concurrency, args.sysadmin_domains = 1000, 200, 200
        scenarios = ["zero"]
        PHASE_TIMEOUT = 1.0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mxscan-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lab = Lab(workdir)
    bench = Bench(args, lab, workdir)
    try:
        if args.profile:
            bench.profile()
        else:
            for name in scenarios:
                getattr(bench, f"scenario_{name}")()
    finally:
        lab.stop()
    if not args.profile:
        record = render(bench.rows, bench.comparisons, bench.labs)
        print(record)
        if args.record:
            args.record.write_text(record)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


class Bench:
    """The scenarios of one benchmark run, sharing one NSD and one set of responders."""

    def __init__(self, args: argparse.Namespace, lab: Lab, workdir: Path) -> None:
        self.args = args
        self.lab = lab
        self.workdir = workdir
        self.sampler = InFlightSampler(lab.stats)
        self.rows: list[Measure] = []
        self.comparisons: list[tuple[str, int, int]] = []
        self.labs: dict[str, dict] = {}
        self._current: tuple | None = None

    def use_lab(self, name: str, domains: int, small_hosts: int, big_share: float, greeting_delay: float, reply_delay: float) -> dict:
        """Generate (once) and serve the lab ``name`` with the given delays."""
        if name not in self.labs:
            self.labs[name] = genlab.generate(self.workdir / name, domains, RESPONDERS, small_hosts, big_share)
        manifest = self.labs[name]
        key = (name, greeting_delay, reply_delay)
        if self._current != key:
            self.lab.stop_smtp()
            if self.lab.nsd_started:
                self.lab.load_zone(Path(manifest["zone"]))
            else:
                self.lab.start_dns(Path(manifest["zone"]))
            self.lab.start_smtp(manifest["host_files"], greeting_delay, reply_delay)
            self._current = key
        return manifest

    def zero_lab(self) -> dict:
        small = 200 if self.args.smoke else genlab.SMALL_HOSTS
        return self.use_lab("lab", self.args.domains, small, genlab.SHARES["big"], 0.0, 0.0)

    def run(self, label: str, client: str, command: list[str], domains: int) -> Measure:
        row = measure(label, client, command, domains, self.sampler)
        self.rows.append(row)
        print(f"{label} | {client}: {row.rate:.0f} domains/s, {row.cpu_per_1000:.2f} CPU s / 1,000, {row.peak_rss_mb:.0f} MB, {row.peak_in_flight} in flight at peak, {row.mean_in_flight:.0f} on average, {row.steady_in_flight:.0f} steady", file=sys.stderr, flush=True)
        return row

    def scenario_zero(self) -> None:
        """Zero delay: mxscan against the floor client and the thread-pool script."""
        manifest = self.zero_lab()
        n, top = self.args.domains, self.args.concurrency
        config = mxscan_config(self.workdir, manifest["domains_file"], "zero")
        self.run("no delay", f"mxscan, concurrency {top}", mxscan_command(config, self.workdir / "zero-high.jsonl", top), n)
        self.run("no delay", f"floor, concurrency {top}", floor_command(manifest["domains_file"], top), n)
        limit = min(n, self.args.sysadmin_domains)
        self.run("no delay", "sysadmin, 64 threads", sysadmin_command(manifest["domains_file"], limit), limit)

    def scenario_truth(self) -> None:
        """Compare statuses and reasons at the highest concurrency with those at concurrency 20."""
        manifest = self.zero_lab()
        n = self.args.domains
        config = mxscan_config(self.workdir, manifest["domains_file"], "zero")
        top = max([self.args.concurrency] + delay_concurrencies(self.args))
        high, low = self.workdir / "truth-high.jsonl", self.workdir / "truth-20.jsonl"
        self.run("no delay", f"mxscan, concurrency {top}", mxscan_command(config, high, top), n)
        self.run("no delay", "mxscan, concurrency 20", mxscan_command(config, low, 20), n)
        self.comparisons.append(compare(f"no delay, {n} domains: concurrency {top} against 20", high, low))

        delay = self.delay_lab()
        part = 500
        part_config = mxscan_config(self.workdir, subset(delay["domains_file"], self.workdir / "delay-part.txt", part), "delay-part")
        high, low = self.workdir / "delay-part-high.jsonl", self.workdir / "delay-part-20.jsonl"
        self.run(f"delay, first {part}", f"mxscan, concurrency {top}", mxscan_command(part_config, high, top), part)
        self.run(f"delay, first {part}", "mxscan, concurrency 20", mxscan_command(part_config, low, 20), part)
        self.comparisons.append(compare(f"delay, first {part} domains: concurrency {top} against 20", high, low))

    def delay_lab(self) -> dict:
        return self.use_lab("delay-lab", self.args.delay_domains, DELAY_SMALL_HOSTS, DELAY_BIG_SHARE, GREETING_DELAY, REPLY_DELAY)

    def scenario_delay(self) -> None:
        """Simulated internet: handshakes in flight and domains per second by concurrency."""
        manifest = self.delay_lab()
        n = self.args.delay_domains
        config = mxscan_config(self.workdir, manifest["domains_file"], "delay")
        label = f"delay {GREETING_DELAY:g}+{REPLY_DELAY:g} s"
        concurrencies = delay_concurrencies(self.args)
        for concurrency in concurrencies:
            self.run(label, f"mxscan, concurrency {concurrency}", mxscan_command(config, self.workdir / f"delay-{concurrency}.jsonl", concurrency), n)
        top = max(concurrencies)
        self.run(label, f"floor, concurrency {top}", floor_command(manifest["domains_file"], top), n)

    def scenario_million(self) -> None:
        """Peak memory for 1,000,000 domains, beside the same run on the 100,000-domain lab."""
        top = self.args.concurrency
        manifest = self.zero_lab()
        config = mxscan_config(self.workdir, manifest["domains_file"], "zero")
        self.run("no delay, memory", f"mxscan, concurrency {top}", mxscan_command(config, Path("/dev/null"), top), self.args.domains)
        big = self.use_lab("lab-1m", 1_000_000, genlab.SMALL_HOSTS, genlab.SHARES["big"], 0.0, 0.0)
        big_config = mxscan_config(self.workdir, big["domains_file"], "million")
        self.run("no delay, memory", f"mxscan, concurrency {top}", mxscan_command(big_config, Path("/dev/null"), top), 1_000_000)

    def profile(self) -> None:
        manifest = self.zero_lab()
        config = mxscan_config(self.workdir, manifest["domains_file"], "zero")
        profile_mxscan(config, self.workdir, self.args.concurrency, self.args.domains, self.sampler)


def delay_concurrencies(args: argparse.Namespace) -> list[int]:
    return [int(value) for value in args.delay_concurrency.split(",") if value.strip()]

if __name__ == "__main__":
    main()
