"""Shared fixtures: both event loops, the record schema, and the real-server fixture."""

from __future__ import annotations

import asyncio
import json
from importlib import resources

import jsonschema
import pytest
import uvloop

LOOPS = {"asyncio": None, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """Run a coroutine to completion on a fresh loop; each test runs under asyncio and uvloop."""
    factory = LOOPS[request.param]

    def runner(coroutine):
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(coroutine)

    return runner


@pytest.fixture(scope="session")
def record_schema():
    text = resources.files("scanner.schema").joinpath("result.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)

