"""The ``mxscan`` command line.

Only data goes to standard output: one JSON object per line. Logs, progress and the
summary go to standard error. Exit status: 0 when the sweep completed, whatever the
domains' states; 2 for a usage or configuration error; 1 for anything else.
"""

from __future__ import annotations

import argparse
import os
import logging
import signal
import sys
from pathlib import Path

import uvloop

from . import __version__
from .config import load_config, with_overrides
from .control import DEFAULT_STOP_GRACE, RunOptions
from .errors import ConfigError, OutputError
from .progress import DEFAULT_LOG_INTERVAL, ProgressMode
from .shard import Shard
from .ops.cli import HANDLERS as OPS_HANDLERS, add_commands as add_ops_commands
from .sweep import sweep_to

log = logging.getLogger("scanner")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _add_scan_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override the configuration file)")
    group.add_argument("--resolver", action="append", metavar="IP[:PORT]", help="DNS resolver to use; repeat for several (default: the system resolver)")
    group.add_argument("--concurrency", type=int, metavar="N", help="domains in flight at once (default 200)")
    group.add_argument("--max-connections", type=int, metavar="N", help="SMTP connections open at once (default: same as --concurrency)")
    group.add_argument("--port", type=int, metavar="PORT", help="TCP port of the mail hosts (default 25)")
    group.add_argument("--ehlo-name", metavar="NAME", help="this scanner's host name, sent in EHLO and HELO (default: the machine's host name)")
    group.add_argument("--ipv6", action="store_true", default=None, help="probe IPv6 addresses too")
    group.add_argument("--allow-private", action="store_true", default=None, help="probe private, loopback and other special-purpose addresses (for labs)")
    group.add_argument("--connect-timeout", type=float, metavar="SECONDS", help="seconds to open a connection (default 10)")
    group.add_argument("--banner-timeout", type=float, metavar="SECONDS", help="seconds to receive the 220 banner (default 30)")
    group.add_argument("--reply-timeout", type=float, metavar="SECONDS", help="seconds to receive the reply to one command (default 30)")
    group.add_argument("--host-deadline", type=float, metavar="SECONDS", help="seconds for the whole session with one address (default 90)")
    group.add_argument("--dns-timeout", type=float, metavar="SECONDS", help="seconds to wait for one DNS answer (default 5)")
    group.add_argument("--dns-retries", type=int, metavar="N", help="extra DNS tries after a timeout (default 2)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("this run (resume, shards, progress, stopping)")
    group.add_argument("--resume", action="store_true", help="continue a stopped sweep: skip the domains already in the -o file, repair a torn last line, and append")
    group.add_argument("--shard", metavar="K/N", help="sweep only shard K of N (0 <= K < N), chosen by a hash of each name; the N shards together cover the list once")
    group.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto", help="progress on stderr: a bar redrawn in place, a line every --progress-interval seconds, or none (default auto: a bar on a terminal, lines otherwise)")
    group.add_argument("--progress-interval", type=float, default=DEFAULT_LOG_INTERVAL, metavar="SECONDS", help=f"seconds between progress lines when stderr is not a terminal (default {DEFAULT_LOG_INTERVAL:.0f})")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress, log output or summary on stderr, only errors")
    group.add_argument("--stop-grace", type=float, default=DEFAULT_STOP_GRACE, metavar="SECONDS", help=f"after SIGINT or SIGTERM, seconds that domains in flight get to finish before they are abandoned (default {DEFAULT_STOP_GRACE:.0f})")
    group.add_argument("--connection-rate", type=float, default=0.0, metavar="PER_SECOND", help="new SMTP connections started per second over the whole sweep (default 0: no limit)")


def _run_options(args: argparse.Namespace) -> RunOptions:
    if args.progress_interval <= 0:
        raise ConfigError(f"--progress-interval: expected a positive number of seconds, got {args.progress_interval}")
    if args.stop_grace < 0:
        raise ConfigError(f"--stop-grace: expected zero or more seconds, got {args.stop_grace}")
    if args.connection_rate < 0:
        raise ConfigError(f"--connection-rate: expected zero (no limit) or more connections per second, got {args.connection_rate}")
    if args.quiet or args.progress == "none":
        progress = ProgressMode.NONE
    elif args.progress == "auto":
        progress = ProgressMode.BAR if sys.stderr.isatty() else ProgressMode.LINES
    else:
        progress = ProgressMode(args.progress)
    return RunOptions(
        resume=args.resume,
        shard=Shard.parse(args.shard) if args.shard else None,
        progress=progress,
        progress_interval=args.progress_interval,
        stop_grace=args.stop_grace,
        connection_rate=args.connection_rate,
    )


# Settings that command-line options override, with the option's name for messages.
FLAG_NAMES = {
    "resolvers": "--resolver",
    "concurrency": "--concurrency",
    "max_connections": "--max-connections",
    "smtp.port": "--port",
    "smtp.ehlo_name": "--ehlo-name",
    "smtp.ipv6": "--ipv6",
    "policy.allow_private": "--allow-private",
    "timeouts.connect": "--connect-timeout",
    "timeouts.banner": "--banner-timeout",
    "timeouts.reply": "--reply-timeout",
    "timeouts.host": "--host-deadline",
    "dns.timeout": "--dns-timeout",
    "dns.retries": "--dns-retries",
    "tls.starttls": "--no-starttls",
    "tls.timeout": "--tls-timeout",
    "tls.ca_file": "--ca-file",
}


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "resolvers": args.resolver,
        "concurrency": args.concurrency,
        "max_connections": args.max_connections,
        "smtp.port": args.port,
        "smtp.ehlo_name": args.ehlo_name,
        "smtp.ipv6": args.ipv6,
        "policy.allow_private": args.allow_private,
        "timeouts.connect": args.connect_timeout,
        "timeouts.banner": args.banner_timeout,
        "timeouts.reply": args.reply_timeout,
        "timeouts.host": args.host_deadline,
        "dns.timeout": args.dns_timeout,
        "dns.retries": args.dns_retries,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxscan", description="Sweep mail domains: resolve MX records and probe each mail host with a bounded SMTP handshake.")
    parser.add_argument("--version", action="version", version=f"mxscan {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no log output or summary on stderr, only errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    scan = commands.add_parser("scan", help="sweep the domains of a YAML configuration file", description="Sweep the domains listed in CONFIG and write one JSON line per domain.")
    scan.add_argument("config", type=Path, metavar="CONFIG.yaml", help="configuration file with 'domains' and/or 'domains_file' and settings")
    scan.add_argument("-o", "--output", type=Path, metavar="OUT.jsonl", help="write the JSON lines to this file instead of standard output")
    _add_scan_options(scan)
    _add_run_options(scan)

    demo = commands.add_parser("demo", help="start the built-in lab on loopback and sweep the demo domains", description="Start a simulated mail internet on loopback (a DNS authority and SMTP servers with scripted behaviours), sweep configs/demo.yaml against it, and print the JSON lines. Needs no network.")
    demo.add_argument("-o", "--output", type=Path, metavar="OUT.jsonl", help="write the JSON lines to this file instead of standard output")

    lab = commands.add_parser("lab", help="run the built-in lab on loopback until interrupted, to try mxscan check or scan against it", description="Start a lab world (default: configs/demo-lab.yaml) on loopback, print its resolver address and SMTP port, and run until SIGINT or SIGTERM.")
    lab.add_argument("world", nargs="?", type=Path, metavar="WORLD.yaml", help="lab world to run (default: the demo's)")
    lab.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds (default: run until interrupted)")

    commands.add_parser("defaults", help="print every setting with its default as a commented YAML file", description="Print every configuration setting with its default value, unit and range, as YAML to start a configuration file from.")
    add_ops_commands(commands)

    check = commands.add_parser(
        "check",
        help="run the manual mail-server test for one domain and explain it",
        description="Look up DOMAIN's MX records, then run the manual test against each mail host (banner, EHLO, STARTTLS, MAIL FROM, RCPT TO, RSET, QUIT), show each session line by line, and explain each failure. Never sends DATA unless --send is given. Exit status: 0 when a mail host completed the handshake, 1 otherwise, 2 for a usage error.",
    )
    check.add_argument("domain", metavar="DOMAIN", help="the mail domain to test, for example example.test")
    check.add_argument("--rcpt", metavar="ADDRESS", help="recipient sent in RCPT TO (default postmaster@DOMAIN)")
    check.add_argument("--sender", metavar="ADDRESS", help="sender sent in MAIL FROM (default: the null sender <>)")
    check.add_argument("--catch-all", action="store_true", help="also send RCPT TO a random address, to see whether the server accepts any address")
    check.add_argument("--no-starttls", action="store_true", help="do not send STARTTLS, even when the server offers it")
    check.add_argument("--tls-timeout", type=float, metavar="SECONDS", help="seconds for the TLS handshake (default 15)")
    check.add_argument("--ca-file", metavar="PEM", help="trust the CAs in this PEM bundle instead of the system trust store")
    check.add_argument("--json", action="store_true", help="print the record as one JSON line, as a sweep writes it, instead of the explanation")
    check.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the explanation: auto colours only on a terminal and when NO_COLOR is unset (default auto)")
    message = check.add_argument_group("test message (sent only with --send)")
    message.add_argument("--send", action="store_true", help="send a test message through the first host that accepts --rcpt: DATA, the message, then the server's final reply; needs --sender and --rcpt")
    message.add_argument("--subject", default="mxscan test message", help="Subject of the test message (default: %(default)s)")
    message.add_argument("--body", default="This is a test message sent by mxscan check.", help="body of the test message")
    _add_scan_options(check)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mxscan: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _check_output_path(output: Path | None, inputs: list[tuple[str, Path | str | None]]) -> None:
    """Reject an output file that is one of the sweep's inputs: opening it would empty it."""
    if output is None or not output.exists():
        return
    for what, path in inputs:
        if path and Path(path).exists() and os.path.samefile(output, path):
            raise ConfigError(f"-o {output} is the {what}; writing the results there would destroy it, so pick another file")


def _command_scan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    settings = with_overrides(config.settings, _overrides(args), FLAG_NAMES)
    _check_output_path(args.output, [
        ("configuration file", args.config),
        ("domains_file", config.domains_file),
        ("policy.exclude_file", settings.policy.exclude_file),
        ("tls.ca_file", settings.tls.ca_file),
    ])
    options = _run_options(args)
    summary = uvloop.run(sweep_to(config, settings, args.output, options))
    if not args.quiet:
        print(summary.render(), file=sys.stderr)
    # A sweep stopped by a signal did not cover its list: --resume finishes it.
    return EXIT_FAILURE if summary.stopped_by else EXIT_OK


def _print_lab(lab) -> None:
    print(f"lab DNS: {lab.resolver}  SMTP port: {lab.smtp_port}  hosts: {len(lab.hosts)}", flush=True)
    print(f"try: mxscan check good.test --resolver {lab.resolver} --port {lab.smtp_port} --allow-private --ehlo-name scanner.test", flush=True)


def _command_lab(args: argparse.Namespace) -> int:
    from .lab.demo import serve_lab
    from .lab.world import LabConfigError

    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f"--duration: expected a positive number of seconds, got {args.duration}")
    try:
        uvloop.run(serve_lab(args.world, args.duration, _print_lab))
    except (LabConfigError, OSError) as exc:
        raise ConfigError(f"cannot start the lab: {exc}") from None
    return EXIT_OK


def _command_defaults(args: argparse.Namespace) -> int:
    from .config_doc import render_defaults

    sys.stdout.write(render_defaults())
    return EXIT_OK


def _command_check(args: argparse.Namespace) -> int:
    import os

    from .check import CheckOptions, Painter, CheckMessage, exit_status, render, run_check
    from .config import Settings
    from .output import encode_line

    overrides = _overrides(args)
    overrides.update({
        "tls.starttls": False if args.no_starttls else None,
        "tls.timeout": args.tls_timeout,
        "tls.ca_file": args.ca_file,
    })
    settings = with_overrides(Settings(), overrides, FLAG_NAMES)

    test_message = None
    if args.send:
        if not args.sender or not args.rcpt:
            raise ConfigError("--send needs --sender and --rcpt, so that the test message goes from and to addresses you chose")
        test_message = CheckMessage(sender=args.sender, recipient=args.rcpt, subject=args.subject, body=args.body)
    options = CheckOptions(rcpt=args.rcpt or "", sender=args.sender or "", catch_all=args.catch_all, message=test_message)

    result = uvloop.run(run_check(args.domain, settings, options))
    if args.json:
        sys.stdout.buffer.write(encode_line(result))
    else:
        colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
        sys.stdout.write(render(result, Painter(colour), settings.resolvers))
    sys.stdout.flush()
    return exit_status(result)


def _command_demo(args: argparse.Namespace) -> int:
    from .lab.demo import run_demo

    summary = uvloop.run(run_demo(args.output))
    if not args.quiet:
        print(summary.render(), file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    # A closed pipe (mxscan ... | head) ends the process quietly, as for other Unix filters.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    handlers = {"scan": _command_scan, "demo": _command_demo, "defaults": _command_defaults, "lab": _command_lab, "check": _command_check, **OPS_HANDLERS}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"mxscan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as exc:
        print(f"mxscan: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("mxscan: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:
        log.exception("mxscan stopped by an unexpected error")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
