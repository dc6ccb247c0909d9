"""Sweep configuration: read once from YAML and the command line, validated, then frozen.

No other module reads YAML or the environment; the rest of mxscan takes a ``Settings``.
Every setting below has a default, a unit and a range; ``docs/configuration.md`` and
``configs/example.yaml`` list them. Errors name the setting's path in the YAML (for
example ``timeouts.connect``) and say what would be valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import socket
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULT_PORT = 25


@dataclasses.dataclass(frozen=True)
class DnsSettings:
    timeout: float = dataclasses.field(default=5.0, metadata={"min": 0.1, "max": 120, "help": "seconds to wait for one DNS answer"})
    retries: int = dataclasses.field(default=2, metadata={"min": 0, "max": 10, "help": "extra tries per server after a timeout"})
    concurrency: int = dataclasses.field(default=500, metadata={"min": 1, "max": 100_000, "help": "DNS queries in flight at once"})


@dataclasses.dataclass(frozen=True)
class SmtpSettings:
    port: int = dataclasses.field(default=DEFAULT_PORT, metadata={"min": 1, "max": 65535, "help": "TCP port of every mail host"})
    ehlo_name: str = dataclasses.field(
        default="", metadata={"check": "host_name", "help": "the scanner's own host name, sent in EHLO and HELO; default: this machine's host name"}
    )
    ipv6: bool = dataclasses.field(default=False, metadata={"help": "probe IPv6 addresses too"})
    source_address: str = dataclasses.field(default="", metadata={"check": "ip_address", "help": "local address to connect from; default: any"})


@dataclasses.dataclass(frozen=True)
class Timeouts:
    connect: float = dataclasses.field(default=10.0, metadata={"min": 0.01, "max": 600, "help": "seconds to open the TCP connection"})
    banner: float = dataclasses.field(default=30.0, metadata={"min": 0.01, "max": 600, "help": "seconds to receive the whole 220 banner"})
    reply: float = dataclasses.field(default=30.0, metadata={"min": 0.01, "max": 600, "help": "seconds to receive the whole reply to one command"})
    quit: float = dataclasses.field(default=2.0, metadata={"min": 0.01, "max": 60, "help": "seconds to wait for the reply to QUIT"})
    host: float = dataclasses.field(default=90.0, metadata={"min": 0.1, "max": 3600, "help": "seconds for the whole session with one address"})


@dataclasses.dataclass(frozen=True)
class Limits:
    max_line_bytes: int = dataclasses.field(default=8192, metadata={"min": 64, "max": 1 << 20, "help": "longest reply line accepted"})
    max_reply_bytes: int = dataclasses.field(default=65536, metadata={"min": 512, "max": 16 << 20, "help": "largest whole reply accepted"})
    max_exchanges: int = dataclasses.field(default=10, metadata={"min": 1, "max": 1000, "help": "MX records taken per domain, in preference order"})
    max_addresses: int = dataclasses.field(default=4, metadata={"min": 1, "max": 100, "help": "addresses taken per exchange and family"})


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    allow_private: bool = dataclasses.field(
        default=False, metadata={"help": "probe special-purpose addresses too (private, loopback, link-local, ...); for labs"}
    )
    allow: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "CIDR ranges probed even when special-purpose"})
    exclude: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "CIDR ranges never probed (opt-out requests)"})
    exclude_file: str = dataclasses.field(
        default="", metadata={"help": "file of CIDR ranges never probed, one per line; relative to the YAML file"}
    )


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    starttls: bool = dataclasses.field(default=True, metadata={"help": "send STARTTLS when the server advertises it, and record the TLS facts"})
    timeout: float = dataclasses.field(default=15.0, metadata={"min": 0.01, "max": 600, "help": "seconds for the TLS handshake after the 220 reply to STARTTLS"})
    ca_file: str = dataclasses.field(
        default="", metadata={"help": "PEM bundle of trusted roots for the chain check; default: the system trust store"}
    )


# The placeholder in recipient.rcpt_template; the domain's A-label form replaces it.
RCPT_DOMAIN_PLACEHOLDER = "{domain}"


def _check_mailbox(path: str, value: str) -> None:
    """Reject text that would break the SMTP command it goes into (RFC 5321 section 4.1.2)."""
    if any(char in value for char in "<> \t\r\n") or not value.isprintable():
        raise ConfigError(f"{path}: {value!r} must not contain spaces, angle brackets or control characters")


@dataclasses.dataclass(frozen=True)
class RecipientSettings:
    """The recipient probe: MAIL FROM, RCPT TO, RSET and QUIT for each domain; never DATA."""

    enabled: bool = dataclasses.field(default=False, metadata={"help": "run the recipient probe for each domain"})
    sender: str = dataclasses.field(default="", metadata={"help": "address sent in MAIL FROM; empty sends the null sender <>"})
    rcpt_template: str = dataclasses.field(
        default="postmaster@{domain}", metadata={"help": "address sent in RCPT TO; {domain} becomes the domain probed"}
    )
    catch_all: bool = dataclasses.field(default=False, metadata={"help": "send a second RCPT with a random local part to see whether any address is accepted"})
    per_address_sessions: int = dataclasses.field(default=1, metadata={"min": 1, "max": 100, "help": "recipient sessions open at once to one address"})
    per_address_rate: float = dataclasses.field(
        default=1.0, metadata={"min": 0, "max": 1000, "help": "recipient sessions started per second to one address; 0 means no limit"}
    )

    def __post_init__(self) -> None:
        if self.sender:
            _check_mailbox("recipient.sender", self.sender)
            if "@" not in self.sender:
                raise ConfigError(f"recipient.sender: {self.sender!r} is not an address; give local@domain, or leave it empty for <>")
        template = self.rcpt_template
        _check_mailbox("recipient.rcpt_template", template.replace(RCPT_DOMAIN_PLACEHOLDER, "d"))
        local_part, at, domain_part = template.rpartition("@")
        if not at or not local_part or RCPT_DOMAIN_PLACEHOLDER not in domain_part:
            raise ConfigError(
                f"recipient.rcpt_template: {template!r} must be local@{RCPT_DOMAIN_PLACEHOLDER}, for example postmaster@{RCPT_DOMAIN_PLACEHOLDER}"
            )

    def address_for(self, domain: str) -> str:
        return self.rcpt_template.replace(RCPT_DOMAIN_PLACEHOLDER, domain)


@dataclasses.dataclass(frozen=True)
class TranscriptSettings:
    enabled: bool = dataclasses.field(default=False, metadata={"help": "keep each session's lines with timestamps in the record"})
    max_lines: int = dataclasses.field(default=200, metadata={"min": 1, "max": 100_000, "help": "lines kept per session; later lines are counted"})
    max_chars: int = dataclasses.field(default=32768, metadata={"min": 256, "max": 16 << 20, "help": "characters kept per session, all lines together"})


@dataclasses.dataclass(frozen=True)
class Settings:
    resolvers: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "DNS resolvers as IP or IP:PORT; default: the system resolver"}
    )
    concurrency: int = dataclasses.field(default=200, metadata={"min": 1, "max": 100_000, "help": "domains in flight at once"})
    max_connections: int = dataclasses.field(default=0, metadata={"min": 0, "max": 100_000, "help": "SMTP connections open at once; 0 means the same as concurrency"})
    dns: DnsSettings = dataclasses.field(default_factory=DnsSettings)
    smtp: SmtpSettings = dataclasses.field(default_factory=SmtpSettings)
    timeouts: Timeouts = dataclasses.field(default_factory=Timeouts)
    limits: Limits = dataclasses.field(default_factory=Limits)
    policy: PolicySettings = dataclasses.field(default_factory=PolicySettings)
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    recipient: RecipientSettings = dataclasses.field(default_factory=RecipientSettings)
    transcript: TranscriptSettings = dataclasses.field(default_factory=TranscriptSettings)

    @property
    def connection_limit(self) -> int:
        return self.max_connections or self.concurrency

    @property
    def ehlo_name(self) -> str:
        # gethostname() reads the kernel's host name and sends no DNS query, unlike
        # socket.getfqdn(), which would ask the system resolver.
        return self.smtp.ehlo_name or socket.gethostname()


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated configuration file: where the domains come from and the settings."""

    path: Path | None
    domains: tuple[Any, ...]
    domains_file: Path | None
    settings: Settings


_TOP_LEVEL_INPUT_KEYS = ("domains", "domains_file")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(sorted(valid))


def _coerce(path: str, value: Any, field: dataclasses.Field) -> Any:
    kind = field.type if not isinstance(field.type, str) else field.type
    meta = field.metadata
    if kind in ("float", float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    elif kind in ("int", int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected a whole number, got {value!r}")
    elif kind in ("bool", bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
    elif kind in ("str", str):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
    elif kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        value = tuple(value)
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{path}: {value!r} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{path}: {value!r} is above the maximum {meta['max']}")
    if value and "check" in meta:
        _CHECKS[meta["check"]](path, value)
    return value


# RFC 5321 section 4.1.1.1: EHLO takes the client's domain name or an address literal.
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _check_host_name(path: str, value: str) -> None:
    if value.startswith("[") and value.endswith("]"):
        literal = value[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            raise ConfigError(f"{path}: {value!r} is not a valid address literal such as [192.0.2.1] or [IPv6:2001:db8::1]") from None
        return
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL_RE.match(label) for label in labels):
        raise ConfigError(
            f"{path}: {value!r} is not a valid host name; give the scanner's own name in ASCII letters, "
            "digits, hyphens and dots (for example scanner.example.net), or an address literal such as [192.0.2.1]"
        )


def _check_ip_address(path: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{path}: {value!r} is not an IP address; give a local address such as 192.0.2.10") from None


_CHECKS = {"host_name": _check_host_name, "ip_address": _check_ip_address}


def _build(cls, data: Any, prefix: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'configuration'}: expected a mapping of settings, got {type(data).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown setting '{path}': {_suggest(str(key), list(fields))}")
        field = fields[key]
        section_type = field.default_factory
        if section_type is not dataclasses.MISSING and dataclasses.is_dataclass(section_type):
            values[key] = _build(section_type, value, path)
        elif key == "resolvers":
            values[key] = parse_resolvers(value, path)
        else:
            values[key] = _coerce(path, value, field)
    return cls(**values)


def parse_resolver(text: str, path: str = "resolver") -> str:
    """Check one resolver given as IP or IP:PORT (IPv6 with a port as [IP]:PORT)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{path}: expected an IP address or IP:PORT, got {text!r}")
    text = text.strip()
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{path}: {text!r} is not IP or [IPv6]:PORT; write an IPv6 resolver with a port as [::1]:53")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{path}: {text!r} is not an IP address; give the resolver as IP or IP:PORT, for example 127.0.0.53:5353") from None
    if port is not None and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigError(f"{path}: port in {text!r} must be a number from 1 to 65535")
    return text


def parse_resolvers(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of IP or IP:PORT strings, got {value!r}")
    return tuple(parse_resolver(item, f"{path}[{index}]") for index, item in enumerate(value))


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Build ``Settings`` from the settings keys of a configuration mapping."""
    return _build(Settings, {key: value for key, value in data.items() if key not in _TOP_LEVEL_INPUT_KEYS}, "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping, instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path) -> SweepConfig:
    """Read and validate a sweep configuration file; raise ``ConfigError`` with the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None

    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None
    return config_from_dict(data, path)


def config_from_dict(data: Any, path: Path | None = None) -> SweepConfig:
    where = str(path) if path else "configuration"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with 'domains' or 'domains_file' at the top, got {type(data).__name__}")

    domains = data.get("domains", [])
    if domains is None:
        domains = []
    if not isinstance(domains, list):
        raise ConfigError(f"{where}: 'domains' must be a list of names or of mappings with 'domain' and 'tags'")

    domains_file = data.get("domains_file")
    if domains_file is not None:
        if not isinstance(domains_file, str) or not domains_file.strip():
            raise ConfigError(f"{where}: 'domains_file' must be a path to a file with one domain per line")
        base = path.parent if path else Path.cwd()
        # absolute(), not resolve(): /dev/stdin and other links must keep their own name.
        domains_file = (base / domains_file).absolute()
        if not domains_file.exists():
            raise ConfigError(f"{where}: domains_file {domains_file} not found (relative paths start at the YAML file's folder)")
        if domains_file.is_dir():
            raise ConfigError(f"{where}: domains_file {domains_file} is a folder; give a file with one domain per line")

    if not domains and domains_file is None and "domains" not in data:
        raise ConfigError(f"{where}: no domains: add a 'domains' list or a 'domains_file' path")

    settings = settings_from_dict(data)
    settings = _resolve_paths(settings, path.parent if path else Path.cwd())
    return SweepConfig(path=path, domains=tuple(domains), domains_file=domains_file, settings=settings)


def with_overrides(settings: Settings, overrides: dict[str, Any], names: dict[str, str] | None = None) -> Settings:
    """Apply values given as {"timeouts.connect": 5.0, ...}, with the same checks as YAML.

    ``names`` maps a dotted setting to the name the user typed (a command-line flag such
    as ``--connect-timeout``), so that an error names what the user can fix.
    """
    names = names or {}
    sections: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        name = names.get(dotted, dotted)
        head, _, tail = dotted.partition(".")
        if tail:
            section = getattr(settings, head)
            field = {f.name: f for f in dataclasses.fields(section)}[tail]
            sections.setdefault(head, {})[tail] = _coerce(name, value, field)
        elif head == "resolvers":
            changes[head] = parse_resolvers(list(value), name)
        else:
            field = {f.name: f for f in dataclasses.fields(settings)}[head]
            changes[head] = _coerce(name, value, field)

    for head, values in sections.items():
        changes[head] = dataclasses.replace(getattr(settings, head), **values)
    return dataclasses.replace(settings, **changes)


def _resolve_file(base: Path, value: str, setting: str) -> str:
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(f"{setting}: {path} not found (relative paths start at the YAML file's folder)")
    return str(path)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Check the policy's ranges, and make the file paths of settings relative to the YAML file absolute."""
    from .policy import parse_networks

    policy = settings.policy
    parse_networks(policy.allow, "policy.allow")
    parse_networks(policy.exclude, "policy.exclude")
    if policy.exclude_file:
        policy = dataclasses.replace(policy, exclude_file=_resolve_file(base, policy.exclude_file, "policy.exclude_file"))
    tls = settings.tls
    if tls.ca_file:
        tls = dataclasses.replace(tls, ca_file=_resolve_file(base, tls.ca_file, "tls.ca_file"))
    return dataclasses.replace(settings, policy=policy, tls=tls)
