"""In-process token buckets with the Redis script's rules, for while Redis is away."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from relay.stores.buckets import REFILL_MS, Draw, Level, Mode, Outcome

# Past this many buckets the oldest are dropped; a dropped bucket comes back full.
_MAX_BUCKETS = 100_000


def _milliseconds() -> float:
    return time.monotonic() * 1000


class LocalBuckets:
    """Buckets of this process only: each relay instance limits on its own."""

    def __init__(self, clock: Callable[[], float] = _milliseconds) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key → (level, at ms)

    def __len__(self) -> int:
        return len(self._state)

    def draw(self, draws: Sequence[Draw]) -> Outcome:
        now = self._clock()
        levels = [self._level(draw, now) for draw in draws]
        waits = [_wait(draw, level) for draw, level in zip(draws, levels, strict=True)]
        allowed = not any(waits)
        if allowed:
            levels = [
                self._charge(draw, level, now) for draw, level in zip(draws, levels, strict=True)
            ]
        return Outcome(
            allowed,
            tuple(
                Level(math.floor(level), _reset_ms(draw, level), wait)
                for draw, level, wait in zip(draws, levels, waits, strict=True)
            ),
        )

    def _level(self, draw: Draw, now: float) -> float:
        state = self._state.get(draw.key)
        if state is None:
            return float(draw.capacity)
        level, at = state
        return min(draw.capacity, level + max(0.0, now - at) * draw.capacity / REFILL_MS)

    def _charge(self, draw: Draw, level: float, now: float) -> float:
        if draw.mode is Mode.GATE or draw.cost <= 0:
            return level
        level -= draw.cost
        if len(self._state) >= _MAX_BUCKETS and draw.key not in self._state:
            # dicts keep insertion order: the first key is the longest untouched one
            del self._state[next(iter(self._state))]
        self._state.pop(draw.key, None)
        self._state[draw.key] = (level, now)
        return level


def _wait(draw: Draw, level: float) -> int:
    if draw.mode is Mode.DEBIT:
        return 0
    need = draw.cost if draw.mode is Mode.TAKE else 0
    if draw.capacity <= 0:
        return -1
    if level >= need:
        return 0
    return max(1, math.ceil((need - level) * REFILL_MS / draw.capacity))


def _reset_ms(draw: Draw, level: float) -> int:
    if draw.capacity <= 0 or level >= draw.capacity:
        return 0
    return math.ceil((draw.capacity - level) * REFILL_MS / draw.capacity)
