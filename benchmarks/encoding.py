"""Measure ways to turn a domain record into its JSON line.

Profiling a 100,000-domain sweep put record conversion and JSON encoding at about a
sixth of mxscan's CPU. This times the current path against alternatives on records
from a small lab sweep, in one process:

- ``to_json_dict`` + ``json.dumps``: what ``scanner.output.encode_line`` does now.
- a converter that caches each dataclass's field names + ``json.dumps``.
- ``to_json_dict`` + ``orjson.dumps`` (if orjson is installed), falling back to
  ``json.dumps`` for the rare line with non-ASCII text, since lines must be ASCII.

    unshare --net sh -c 'ip link set lo up && .venv/bin/python benchmarks/encoding.py'
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanner.config import config_from_dict, with_overrides  # noqa: E402
from scanner.inputs import iter_entries  # noqa: E402
from scanner.lab.world import Lab  # noqa: E402
from scanner.output import encode_line  # noqa: E402
from scanner.results import SCHEMA_VERSION, to_json_dict  # noqa: E402
from scanner.sweep import Sweep  # noqa: E402

ROUNDS = 20_000


class Collect:
    def __init__(self) -> None:
        self.results = []

    def write(self, result, flush: bool = True) -> None:
        self.results.append(result)

    def flush(self) -> None:
        pass


async def lab_records() -> list:
    hosts = [("127.0.48.1", "mx1.enc.test", "esmtp"), ("127.0.48.2", "mx2.enc.test", "helo_only"), ("127.0.48.3", "mx3.enc.test", "banner_reject")]
    records = {name: {"A": [address]} for address, name, _ in hosts}
    records["a.enc.test"] = {"MX": ["10 mx1.enc.test.", "20 mx2.enc.test."]}
    records["b.enc.test"] = {"MX": ["10 mx3.enc.test."]}
    records["c.enc.test"] = {"MX": ["0 ."]}
    world = {
        "dns": {"address": "127.0.48.253", "port": 0},
        "zone": {"records": records},
        "smtp": {"port": 0, "hosts": [{"address": a, "hostname": h, "behaviour": b} for a, h, b in hosts]},
    }
    async with Lab.from_dict(world) as lab:
        config = config_from_dict({"domains": ["a.enc.test", "b.enc.test", "c.enc.test", "d.enc.test"], "policy": {"allow_private": True}, "tls": {"starttls": False}})
        settings = with_overrides(config.settings, {"resolvers": [lab.resolver], "smtp.port": lab.smtp_port, "smtp.ehlo_name": "enc.test"})
        sweep = Sweep(settings)
        collect = Collect()
        try:
            await sweep.run(iter_entries(config.domains, None), collect)
        finally:
            await sweep.close()
        return collect.results


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def cached_plain(value):
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value):
        names = _FIELD_NAMES[kind] = tuple(field.name for field in dataclasses.fields(value))
    if names is not None:
        return {name: cached_plain(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [cached_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: cached_plain(item) for key, item in value.items()}
    return value


def cached_json_dict(result) -> dict:
    plain = cached_plain(result)
    # The same keys as to_json_dict, in its order; checked against it below.
    reference = to_json_dict(result)
    return {key: plain.get(key, reference[key]) for key in reference}


def time_it(label: str, function, results) -> float:
    started = time.perf_counter()
    for index in range(ROUNDS):
        function(results[index % len(results)])
    per_line = (time.perf_counter() - started) / ROUNDS * 1e6
    print(f"{label:<48} {per_line:7.1f} microseconds per line")
    return per_line


def main() -> None:
    results = uvloop.run(lab_records())
    print(f"{len(results)} lab records, {sum(len(encode_line(r)) for r in results) // len(results)} bytes per line on average")
    time_it("to_json_dict + json.dumps (current)", encode_line, results)
    time_it("to_json_dict alone", to_json_dict, results)
    time_it("cached field names, plain dict only", cached_plain, results)
    try:
        import orjson
    except ImportError:
        print("orjson is not installed: pip install orjson to time it")
        return

    def with_orjson(result) -> bytes:
        data = orjson.dumps(to_json_dict(result))
        if not data.isascii():
            data = json.dumps(json.loads(data), ensure_ascii=True, separators=(",", ":")).encode("ascii")
        return data + b"\n"

    for result in results:
        assert json.loads(with_orjson(result)) == json.loads(encode_line(result))
    time_it("to_json_dict + orjson.dumps", with_orjson, results)
    time_it("json.dumps of a ready dict", lambda r, d={}: json.dumps(to_json_dict(r), ensure_ascii=True, separators=(",", ":")), results)


if __name__ == "__main__":
    main()
