"""Real Debian servers for the interop tests: NSD, Unbound and Postfix on loopback.

The ``real_servers`` session fixture runs the shell scripts in
``tests/realservers/`` to start, in this order:

- NSD, the authority, on 127.0.54.1:5354. It serves the parent zones ``test.``
  and ``example.`` and the zone ``interop.test`` (MX 10 mx.interop.test, and
  mx.interop.test A 127.0.25.200).
- Unbound, the resolver for the scanner, on 127.0.55.1:5355. It sends queries
  for names under ``test.`` and ``example.`` to NSD only and answers REFUSED for
  every other name.
- Postfix as mx.interop.test on 127.0.25.200:2525, with STARTTLS and a
  self-signed certificate made here. RCPT TO:<postmaster@interop.test> gets
  250, any other recipient 550 or 554, and DATA always 554, so no mail is kept.

The ``real_exim`` session fixture adds Exim as a second MTA, mx.exim.test on
127.0.25.201:2525, and the zone ``exim.test`` (MX 10 mx.exim.test). Debian's
Exim package conflicts with postfix, so Exim runs from a folder unpacked by
``tests/realservers/exim-unpack.sh`` and named by the environment variable
MXSCAN_EXIM_ROOT; without that variable the fixture skips. Its replies match
Postfix's except that every rejection is 550 (see exim.conf.in).

All state lives in one temporary directory, which ``stop()`` removes after
copying the logs to a pytest temporary directory. The servers need root and
the Debian packages nsd, unbound and postfix. Without them the fixture skips,
unless the environment variable CI is set: then it fails, so a CI machine that
lacks a package cannot pass by skipping.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from scanner.lab.certs import make_self_signed

logger = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).resolve().parent / "realservers"

AUTHORITY_ADDRESS = "127.0.54.1"
AUTHORITY_PORT = 5354
RESOLVER_ADDRESS = "127.0.55.1"
RESOLVER_PORT = 5355
POSTFIX_ADDRESS = "127.0.25.200"
SMTP_PORT = 2525
POSTFIX_HOSTNAME = "mx.interop.test"
DEFAULT_ZONE_ORIGIN = "interop.test"

# Exim, the optional second MTA, listens on the same port as Postfix at its own
# address, and serves the zone exim.test.
EXIM_ADDRESS = "127.0.25.201"
EXIM_HOSTNAME = "mx.exim.test"
EXIM_ZONE_ORIGIN = "exim.test"
# Folder made by tests/realservers/exim-unpack.sh; without it the Exim tests skip.
EXIM_ROOT_VARIABLE = "MXSCAN_EXIM_ROOT"

# Upper bound for one script run. Each script already waits at most 20 s for
# its daemon to answer (REALSERVERS_START_TIMEOUT in lib.sh); Postfix needs
# about 3 s to start on a 2-core machine.
SCRIPT_TIMEOUT_SECONDS = 60

# Program, and the Debian package that installs it.
REQUIRED_PROGRAMS = {
    "/usr/sbin/nsd": "nsd",
    "/usr/sbin/nsd-control": "nsd",
    "/usr/sbin/nsd-checkconf": "nsd",
    "/usr/sbin/nsd-checkzone": "nsd",
    "/usr/sbin/unbound": "unbound",
    "/usr/sbin/unbound-control": "unbound",
    "/usr/sbin/unbound-checkconf": "unbound",
    "/usr/sbin/postfix": "postfix",
    "/usr/lib/postfix/sbin/master": "postfix",
}


class RealServersError(RuntimeError):
    """A server script failed; the message includes its output and log tail."""

    def __init__(self, command: list[str], returncode: int | None, output: str) -> None:
        self.command = command
        self.returncode = returncode
        self.output = output
        status = "timed out" if returncode is None else f"exited with status {returncode}"
        super().__init__(f"{' '.join(command)} {status}:\n{output}")


def missing_requirements() -> list[str]:
    """Return why the real servers cannot run here, or an empty list."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root, which Postfix needs")

    missing_packages = sorted(
        {package for program, package in REQUIRED_PROGRAMS.items() if not os.access(program, os.X_OK)}
    )
    if missing_packages:
        problems.append(
            f"missing Debian packages {', '.join(missing_packages)} "
            f"(apt-get install -y {' '.join(missing_packages)})"
        )
    return problems


def ci_is_set() -> bool:
    """Return whether the environment variable CI is set to a true value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_real_servers() -> None:
    """Skip the calling test if the servers cannot run here, or fail if CI is set."""
    problems = missing_requirements()
    if not problems:
        return

    message = "real servers unavailable: " + "; ".join(problems)
    if ci_is_set():
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


def mail_zone_text(origin: str, mx_address: str, serial: int = 1) -> str:
    """Return a zone file with MX 10 mx.<origin> and that host's A record."""
    return (
        f"$ORIGIN {origin}.\n"
        "$TTL 60\n"
        f"@\tIN SOA\tns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 60\n"
        f"@\tIN NS\tns.{origin}.\n"
        f"@\tIN MX\t10 mx.{origin}.\n"
        f"ns\tIN A\t{AUTHORITY_ADDRESS}\n"
        f"mx\tIN A\t{mx_address}\n"
    )


def interop_zone_text(serial: int = 1) -> str:
    """Return the zone file of interop.test that the fixture serves by default."""
    return mail_zone_text(DEFAULT_ZONE_ORIGIN, POSTFIX_ADDRESS, serial)


def run_script(script: str, *arguments: str | Path) -> str:
    """Run one script from tests/realservers and return its standard output."""
    command = ["bash", str(SCRIPTS_DIR / script), *map(str, arguments)]
    environment = dict(os.environ)
    # A non-root PATH often lacks the sbin folders that hold the daemons.
    environment["PATH"] = f"{environment.get('PATH', '')}:/usr/sbin:/sbin"
    try:
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_SECONDS,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise RealServersError(command, None, _decode(error.stdout) + _decode(error.stderr)) from error
    if completed.returncode != 0:
        raise RealServersError(command, completed.returncode, completed.stdout + completed.stderr)
    return completed.stdout


def _decode(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def query_soa_serial(address: str, port: int, origin: str) -> int | None:
    """Return the SOA serial that a DNS server answers for origin, or None."""
    query = dns.message.make_query(origin, dns.rdatatype.SOA)
    response = dns.query.udp(query, address, port=port, timeout=2)
    if response.rcode() != dns.rcode.NOERROR:
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return rrset[0].serial
    return None


class RealServers:
    """Running NSD, Unbound and Postfix, with the addresses a test needs."""

    def __init__(self, state_dir: Path, log_dir: Path) -> None:
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.authority = f"{AUTHORITY_ADDRESS}:{AUTHORITY_PORT}"
        self.resolver_address = RESOLVER_ADDRESS
        self.resolver_port = RESOLVER_PORT
        self.resolver = f"{RESOLVER_ADDRESS}:{RESOLVER_PORT}"
        self.postfix_address = POSTFIX_ADDRESS
        self.smtp_port = SMTP_PORT
        self.postfix_hostname = POSTFIX_HOSTNAME
        self.tls_cert_path = state_dir / "tls" / "cert.pem"
        self.tls_key_path = state_dir / "tls" / "key.pem"
        # Daemon name -> PID, in start order; stop() stops them in reverse.
        self.pids: dict[str, int] = {}
        self._stopped = False

    def start(self) -> None:
        """Start NSD, load the default zone, then start Unbound and Postfix."""
        self.tls_cert_path.parent.mkdir(parents=True)
        files = make_self_signed(self.postfix_hostname, self.tls_cert_path.parent)
        self.tls_cert_path, self.tls_key_path = files.certificate, files.key

        output = run_script("nsd.sh", "start", self.state_dir / "nsd", AUTHORITY_ADDRESS, AUTHORITY_PORT)
        self.pids["nsd"] = int(output.split()[-1])
        self.load_zone(DEFAULT_ZONE_ORIGIN, interop_zone_text(), flush_resolver=False)

        output = run_script(
            "unbound.sh",
            "start",
            self.state_dir / "unbound",
            RESOLVER_ADDRESS,
            RESOLVER_PORT,
            AUTHORITY_ADDRESS,
            AUTHORITY_PORT,
        )
        self.pids["unbound"] = int(output.split()[-1])

        output = run_script(
            "postfix.sh",
            "start",
            self.state_dir / "postfix",
            POSTFIX_ADDRESS,
            SMTP_PORT,
            self.postfix_hostname,
            self.tls_cert_path,
            self.tls_key_path,
        )
        self.pids["postfix"] = int(output.split()[-1])
        logger.info("real servers started: %s", self.pids)

    def load_zone(self, origin: str, zonefile_text: str, *, flush_resolver: bool = True) -> None:
        """Write a zone file, (re)load it into NSD and flush Unbound's cache.

        Raises RealServersError if NSD rejects the zone or does not serve its
        SOA serial within 20 s, and AssertionError if Unbound then answers
        another serial.
        """
        zone_input_dir = self.state_dir / "zone-input"
        zone_input_dir.mkdir(exist_ok=True)
        zone_path = zone_input_dir / f"{origin.rstrip('.').lower()}.zone"
        zone_path.write_text(zonefile_text)
        self.load_zone_file(origin, zone_path, flush_resolver=flush_resolver)

    def load_zone_file(self, origin: str, zone_path: Path, *, flush_resolver: bool = True) -> None:
        """(Re)load a zone file into NSD and flush Unbound's cache; see load_zone."""
        run_script("nsd.sh", "load-zone", self.state_dir / "nsd", origin, zone_path)
        if not flush_resolver:
            return

        run_script("unbound.sh", "flush", self.state_dir / "unbound")
        expected = query_soa_serial(AUTHORITY_ADDRESS, AUTHORITY_PORT, origin)
        resolved = query_soa_serial(RESOLVER_ADDRESS, RESOLVER_PORT, origin)
        assert resolved == expected, f"Unbound answers SOA serial {resolved} for {origin}, NSD {expected}"

    def stop(self) -> None:
        """Stop the daemons in reverse start order, keep the logs, remove the state.

        Safe to call twice. The logs are copied to log_dir, a pytest temporary
        directory that outlives the session.
        """
        if self._stopped:
            return
        self._stopped = True

        errors = []
        for name in reversed(list(self.pids)):
            try:
                run_script(f"{name}.sh", "stop", self.state_dir / name)
            except RealServersError as error:
                errors.append(str(error))
        logger.info("real servers stopped: %s", self.pids)

        for log_file in self.state_dir.glob("*/*.log"):
            shutil.copy(log_file, self.log_dir / f"{log_file.parent.name}-{log_file.name}")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if errors:
            raise RealServersError(["stop"], 1, "\n".join(errors))


def start_real_servers(log_dir: Path) -> RealServers:
    """Start the servers in a new state directory and return them running.

    On a failed start, stops whatever had started and raises RealServersError.
    """
    # Postfix opens files in the state directory as the postfix user, which
    # needs search permission on every parent directory. pytest's temporary
    # directories are mode 0700, so the state gets a 0711 directory of its own
    # under the system temporary directory.
    state_dir = Path(tempfile.mkdtemp(prefix="mxscan-realservers-"))
    state_dir.chmod(0o711)

    servers = RealServers(state_dir, log_dir)
    try:
        servers.start()
    except BaseException:
        try:
            servers.stop()
        except RealServersError:
            logger.exception("stopping the real servers after a failed start failed")
        raise
    return servers


class SessionShare:
    """One running instance shared by every definition of a session fixture.

    pytest makes a separate session fixture for each test module or conftest
    that imports the fixture function, so without this each one would start
    its own servers on the same ports. The last user to release it stops it.
    """

    def __init__(self) -> None:
        self.instance: Any = None
        self.users = 0

    def acquire(self, start: Callable[[], Any]) -> Any:
        if self.instance is None:
            self.instance = start()
        self.users += 1
        return self.instance

    def release(self, stop: Callable[[Any], None]) -> None:
        self.users -= 1
        if self.users == 0:
            instance, self.instance = self.instance, None
            stop(instance)


_shared_servers = SessionShare()
_shared_exim = SessionShare()


def _start_servers_with_cleanup(log_dir: Path) -> RealServers:
    servers = start_real_servers(log_dir)
    # The session finalizer stops them; atexit covers an interrupted session.
    atexit.register(servers.stop)
    return servers


def _stop_servers_with_cleanup(servers: RealServers) -> None:
    try:
        servers.stop()
    finally:
        atexit.unregister(servers.stop)


@pytest.fixture(scope="session")
def real_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServers]:
    """NSD, Unbound and Postfix for the session; see the module docstring."""
    require_real_servers()
    servers = _shared_servers.acquire(
        lambda: _start_servers_with_cleanup(tmp_path_factory.mktemp("realservers-logs"))
    )
    try:
        yield servers
    finally:
        _shared_servers.release(_stop_servers_with_cleanup)


class RealExim:
    """A running Exim beside Postfix, receiving mail for exim.test."""

    def __init__(self, servers: RealServers, exim_root: Path) -> None:
        self.servers = servers
        self.exim_root = exim_root
        self.state_dir = servers.state_dir / "exim"
        self.address = EXIM_ADDRESS
        self.smtp_port = SMTP_PORT
        self.hostname = EXIM_HOSTNAME
        self.zone_origin = EXIM_ZONE_ORIGIN
        self.tls_cert_path = self.state_dir / "tls" / "cert.pem"
        self.pid: int | None = None

    def start(self) -> None:
        """Make a certificate, start Exim and load the zone exim.test into NSD."""
        certificate_dir = self.servers.state_dir / "exim-certificate"
        certificate_dir.mkdir()
        files = make_self_signed(self.hostname, certificate_dir)
        cert_path, key_path = files.certificate, files.key

        output = run_script(
            "exim.sh",
            "start",
            self.state_dir,
            self.exim_root,
            self.address,
            self.smtp_port,
            self.hostname,
            cert_path,
            key_path,
        )
        self.pid = int(output.split()[-1])
        # RealServers.stop() then stops Exim too, if the session ends without
        # this fixture's teardown.
        self.servers.pids["exim"] = self.pid
        logger.info("Exim started with PID %d", self.pid)
        self.servers.load_zone(self.zone_origin, mail_zone_text(self.zone_origin, self.address))

    def stop(self) -> None:
        """Stop Exim and copy its logs to the log folder of the real servers."""
        if self.pid is None:
            return
        self.pid = None

        run_script("exim.sh", "stop", self.state_dir)
        self.servers.pids.pop("exim", None)
        logger.info("Exim stopped")
        for log_file in (self.state_dir / "log").glob("*log"):
            shutil.copy(log_file, self.servers.log_dir / f"exim-{log_file.name}")


@pytest.fixture(scope="session")
def real_exim(real_servers: RealServers) -> Iterator[RealExim]:
    """Exim as a second MTA for the session, if MXSCAN_EXIM_ROOT names its folder.

    Skips when the variable is unset, and fails when it names a folder
    without exim4, so a broken unpack step is not hidden by a skip.
    """
    exim_root = os.environ.get(EXIM_ROOT_VARIABLE, "")
    if not exim_root:
        pytest.skip(
            f"Exim unavailable: set {EXIM_ROOT_VARIABLE} to a folder made by "
            "tests/realservers/exim-unpack.sh FOLDER"
        )
    if not os.access(Path(exim_root) / "usr/sbin/exim4", os.X_OK):
        pytest.fail(
            f"{EXIM_ROOT_VARIABLE}={exim_root} contains no usr/sbin/exim4; "
            f"run tests/realservers/exim-unpack.sh {exim_root}"
        )

    def start_exim() -> RealExim:
        exim = RealExim(real_servers, Path(exim_root))
        try:
            exim.start()
        except BaseException:
            exim.stop()
            raise
        return exim

    exim = _shared_exim.acquire(start_exim)
    try:
        yield exim
    finally:
        _shared_exim.release(RealExim.stop)
