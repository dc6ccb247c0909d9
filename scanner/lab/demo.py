"""``mxscan demo``: start the demo lab in this process and sweep the demo domains against it.

The demo needs no network: the lab listens on loopback, and the sweep's resolver and
port are set to the lab's, so nothing is looked up or probed anywhere else.
"""

from __future__ import annotations

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
