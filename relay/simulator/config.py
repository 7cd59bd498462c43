"""The simulator's knobs: how long, how fast and how badly it answers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimulatorConfig:
    """Read afresh on every request, so a test may change it between requests.

    `cut_after` breaks every streamed answer after min(cut_after, tokens) content
    tokens; a non-streamed request is dropped without any response at all.
    """

    tokens: int = 16
    token_delay: float = 0.0
    first_byte_delay: float = 0.0
    error_status: int | None = None
    cut_after: int | None = None
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = ("sim-small", "sim-large")
    # Tests read what was forwarded; a long-running `relay simulate` must not grow.
    record_requests: bool = True
