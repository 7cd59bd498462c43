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
    out_of_quota: bool = False  # OpenAI's 429 insufficient_quota: the account has nothing left
    cut_after: int | None = None
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = ("sim-small", "sim-large")
    # The account the answers' headers name, in OpenAI's id formats: what relay must
    # never show its own clients.
    organization: str = "org-Sim4ccount0rgan1sat10nXQ"
    project: str = "proj_Sim4ccountPr0ject0000XyZ"
    # The account's limits, as reported in its x-ratelimit-* headers (none is enforced).
    requests_per_minute: int = 10_000
    tokens_per_minute: int = 2_000_000
    # Tests read what was forwarded; a long-running `relay simulate` must not grow.
    record_requests: bool = True
