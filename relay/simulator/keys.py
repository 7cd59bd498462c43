"""The simulator application's and its requests' typed keys."""

from __future__ import annotations

from aiohttp import web

from relay.simulator.config import SimulatorConfig
from relay.simulator.state import SimulatorState

SIMULATOR_CONFIG = web.AppKey("simulator_config", SimulatorConfig)
SIMULATOR_STATE = web.AppKey("simulator_state", SimulatorState)

ARRIVED_AT = web.RequestKey("simulator_arrived_at", float)
# The tokens a request spends from the account's per-minute limit, set once its key
# is accepted: until then no account is known, and its answer names none.
SPENT_TOKENS = web.RequestKey("simulator_spent_tokens", int)
