"""A span of time as OpenAI writes its rate-limit resets: Go's time.Duration format."""

from __future__ import annotations


def go_duration(ms: int) -> str:
    """`ms` as Go prints a duration: 12ms, 1s, 1.5s, 6m0s, 1h0m0s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"
