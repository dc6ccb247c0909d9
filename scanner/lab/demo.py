"""``mxscan demo``: start the demo lab in this process and sweep the demo domains against it.

The demo needs no network: the lab listens on loopback, and the sweep's resolver and
port are set to the lab's, so nothing is looked up or probed anywhere else.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from ..config import load_config, with_overrides
from ..output import Summary
from ..sweep import sweep_to
from .world import Lab

HERE = Path(__file__).resolve().parent
DEMO_LAB = HERE / "demo-lab.yaml"
DEMO_CONFIG = HERE / "demo.yaml"


async def run_demo(output: Path | None) -> Summary:
    config = load_config(DEMO_CONFIG)
    async with Lab.from_yaml(DEMO_LAB) as lab:
        settings = with_overrides(config.settings, {"resolvers": [lab.resolver], "smtp.port": lab.smtp_port})
        return await sweep_to(config, settings, output)


async def serve_lab(path: Path | None, duration: float | None, on_ready: Callable[[Lab], None]) -> None:
    """Run a lab world until SIGINT or SIGTERM (or ``duration`` seconds); ``on_ready`` gets the started lab."""
    lab = Lab.from_yaml(path or DEMO_LAB)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with lab:
        on_ready(lab)
        try:
            await asyncio.wait_for(stop.wait(), timeout=duration)
        except TimeoutError:
            pass
