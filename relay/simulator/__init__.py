"""An OpenAI-compatible upstream simulator for tests, `relay dev` and the benchmark."""

from relay.simulator.app import create_simulator_app
from relay.simulator.config import SimulatorConfig
from relay.simulator.keys import SIMULATOR_CONFIG, SIMULATOR_STATE
from relay.simulator.state import ReceivedRequest, SimulatorState
from relay.simulator.tokens import completion_text, count_prompt_tokens, token_text

__all__ = [
    "SIMULATOR_CONFIG",
    "SIMULATOR_STATE",
    "ReceivedRequest",
    "SimulatorConfig",
    "SimulatorState",
    "completion_text",
    "count_prompt_tokens",
    "create_simulator_app",
    "token_text",
]
