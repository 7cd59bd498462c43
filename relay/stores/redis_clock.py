"""Redis's clock as read from this process, so a script can tell when relay stopped waiting."""

from __future__ import annotations

import math

# How fast Redis's clock and this process's monotonic clock may drift apart:
# NTP slews each by at most 500 ppm, in opposite directions at worst.
MAX_DRIFT = 1e-3
# A reading older than this is renewed before use (a TIME round trip). Every
# script reply carries Redis's time too, so this happens only after a lull.
RESYNC_AFTER = 10.0


class RedisClock:
    """A lower bound of Redis's TIME minus this process's monotonic clock.

    Redis read its clock somewhere between sending a command and receiving the
    reply, so the offset is at least the reading minus the receipt time (the
    midpoint less half the round trip). Converting a local instant with a lower
    bound gives a Redis time that is certainly not later than the true one. The
    bound loosens by MAX_DRIFT per second since it was read, and keeps the best
    reading: a late-read reply (relay's own loop lagging) only makes a worse one.
    Monotonic time on this side, so relay's own clock steps change nothing.
    """

    def __init__(self) -> None:
        self._low: float | None = None  # seconds, as read at `_at`
        self._at = 0.0

    def stale(self, now: float) -> bool:
        return self._low is None or now - self._at > RESYNC_AFTER

    def observe(self, sent: float, received: float, redis_seconds: float) -> None:
        """Redis said `redis_seconds` between monotonic instants `sent` and `received`."""
        low, high = redis_seconds - received, redis_seconds - sent
        current = self._bound(received)
        # A reading the bound contradicts (its highest offset below the bound) means
        # Redis's clock stepped back, or another server answers now: start from it.
        if current is None or low > current or high < current:
            self._low, self._at = low, received

    def redis_micros(self, instant: float) -> int:
        """Monotonic `instant` on Redis's clock, in microseconds, never later than the truth."""
        low = self._bound(instant)
        assert low is not None, "read the clock before converting with it"
        return math.floor((instant + low) * 1_000_000)

    def _bound(self, instant: float) -> float | None:
        if self._low is None:
            return None
        return self._low - MAX_DRIFT * abs(instant - self._at)
