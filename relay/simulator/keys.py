"""The simulator application's typed keys."""

from __future__ import annotations

from aiohttp import web

from relay.simulator.config import SimulatorConfig
from relay.simulator.state import SimulatorState

SIMULATOR_CONFIG = web.AppKey("simulator_config", SimulatorConfig)
SIMULATOR_STATE = web.AppKey("simulator_state", SimulatorState)
