"""The record layout: schema and code agree, and a golden record pins the layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

from labkit import sweep_lab, world
from scanner.lab.world import Lab
from scanner.results import MxSource, Phase, Reason, Status

GOLDEN = Path(__file__).parent / "golden"


def test_schema_enums_match_code(record_schema):
    schema = record_schema.schema
    assert schema["properties"]["status"]["enum"] == [status.value for status in Status]
    assert schema["$defs"]["reason"]["enum"] == [reason.value for reason in Reason]
    assert schema["$defs"]["failure"]["properties"]["phase"]["enum"] == [phase.value for phase in Phase]
    assert schema["properties"]["mx_source"]["enum"] == [source.value for source in MxSource] + [None]


def scrub(value, key=None):
    """Replace values that change from run to run (times, ports) with placeholders."""
    if isinstance(value, dict):
        if key == "timings_ms":
            return {phase: "<ms>" for phase in sorted(value)}
        return {k: scrub(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if key in ("started_at", "elapsed_ms", "port", "t_ms"):
        return f"<{key}>"
    return value


def test_golden_records(run, record_schema):
    records = {
        "golden.test": {"MX": ["10 mx1.golden.test.", "20 mx2.golden.test."]},
        "mx1.golden.test": {"A": ["127.0.28.1"]},
        "mx2.golden.test": {"A": ["127.0.28.2"], "AAAA": ["::1"]},
        "refused.golden.test": {"MX": ["10 mx.refused.golden.test."]},
        "mx.refused.golden.test": {"A": ["127.0.28.3"]},
    }
    hosts = [
        ("127.0.28.1", "mx1.golden.test", "esmtp"),
        ("127.0.28.2", "mx2.golden.test", {"behaviour": "banner_reject", "reject_code": 554, "reject_text": "5.7.1 No service"}),
    ]

    async def scenario():
        async with Lab.from_dict(world(records, hosts)) as lab:
            return await sweep_lab(lab, [{"domain": "Golden.test", "tags": ["pinned"]}, "refused.golden.test"])

    found = sorted(run(scenario()), key=lambda record: record["domain"])
    for record in found:
        record_schema.validate(record)
    actual = scrub(found)
    path = GOLDEN / "records.json"
    if os.environ.get("MXSCAN_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=False) + "\n")
    expected = json.loads(path.read_text())
    assert actual == expected
