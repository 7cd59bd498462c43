"""In-process token buckets with the Redis script's rules, for while Redis is away.

They also keep the last level Redis reported for each bucket (`remember`), so a
bucket that falls back here carries on from what its client used in Redis: a
brief Redis stall does not hand every client a fresh allowance on every instance.
What they take for Redis while it is away is owed to it (`take_owed`), so its
return does not hand one either: how far each such bucket stands below where it
would be had only what is not owed been charged, net of the refill Redis made too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from relay.stores.buckets import MAX_DEBT_PERIODS, REFILL_MS, Draw, Level, Mode, Outcome

# Past this many buckets the longest untouched is dropped (it comes back full).
# About 300 bytes each, so some 30 MB at most; a full bucket is not kept at all.
MAX_BUCKETS = 100_000


def _milliseconds() -> float:
    return time.monotonic() * 1000


class LocalBuckets:
    """Buckets of this process only: each relay instance limits on its own."""

    def __init__(
        self, clock: Callable[[], float] = _milliseconds, *, max_buckets: int = MAX_BUCKETS
    ) -> None:
        self._clock = clock
        self._max = max_buckets
        self._state: dict[str, tuple[float, float]] = {}  # key → (level, at ms)
        # Buckets Redis is owed for: key → (level, at ms) the bucket would be at untouched
        # by the charges owed (from the first; the others move it too), the capacity
        # last drawn by, and what was owed by an earlier one. Only buckets kept in
        # _state: bounded with them.
        self._owed: dict[str, tuple[float, float, int, float]] = {}

    def __len__(self) -> int:
        return len(self._state)

    @property
    def owed(self) -> int:
        """How many buckets Redis is owed for."""
        return len(self._owed)

    def draw(self, draws: Sequence[Draw], *, owed: int = 0) -> Outcome:
        """Decide `draws` here and charge them if allowed; the first `owed` of them are
        charged for Redis, which is away, and owed to it."""
        now = self._clock()
        levels = [self._level(draw, now) for draw in draws]
        waits = [_wait(draw, level) for draw, level in zip(draws, levels, strict=True)]
        allowed = not any(waits)
        if allowed:
            for i, (draw, level) in enumerate(zip(draws, levels, strict=True)):
                if draw.cost:
                    self._untouched(draw, level, now, owed=i < owed)
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

    def remember(self, draws: Sequence[Draw], outcome: Outcome) -> None:
        """Take Redis's word for these buckets' levels, as of now."""
        now = self._clock()
        for draw, level in zip(draws, outcome.levels, strict=True):
            if draw.key in self._owed:
                continue  # Redis's word lacks what it is owed here: kept until paid
            # Both are lower bounds of the level Redis holds: whole tokens, and the
            # level the (rounded up) time to full implies. The higher one is closer.
            known = float(level.remaining)
            if draw.capacity > 0:
                known = max(known, draw.capacity - level.reset_ms * draw.capacity / REFILL_MS)
            if known >= draw.capacity:
                self._forget(draw.key)  # full: as if never seen
            else:
                self._set(draw.key, known, now)

    def take_owed(self) -> tuple[Draw, ...]:
        """What Redis is owed, forgotten here: the caller charges it. Redis refilled
        meanwhile as these buckets did, so each bucket owes how far it stands below the
        level it would have reached untouched (an outage at a client's limit owes a
        minute's budget at most, not all it took); one that stands above it (given back
        more than it took: a reservation Redis held, settled for less) is owed a credit."""
        now = self._clock()
        owed = []
        for key, (level, at, capacity, carried) in self._owed.items():
            untouched = _refilled(level, at, capacity, now)
            current = self._level(Draw(key, capacity), now)
            if cost := round(carried + untouched - current):
                owed.append(Draw(key, capacity, cost, Mode.DEBIT))
            if current >= capacity:
                self._state.pop(key, None)  # kept full only while owed
        self._owed = {}
        return tuple(owed)

    def _untouched(self, draw: Draw, level: float, now: float, *, owed: bool) -> None:
        """Follow `draw` (about to be charged from `level`) in the level its bucket would
        be at untouched by what Redis is owed: it starts at the first charge owed, and
        takes every charge not owed after that."""
        start = self._owed.get(draw.key)
        if start is None:
            if owed:
                self._owed[draw.key] = (level, now, draw.capacity, 0.0)
            return
        untouched, at, capacity, carried = start
        untouched = _refilled(untouched, at, capacity, now)
        if capacity != draw.capacity:
            # Its limit changed: what is owed so far is measured by the old one and
            # kept, and the bucket goes on from here by the new one.
            state = self._state.get(draw.key)
            carried += untouched - (_refilled(*state, capacity, now) if state else capacity)
            untouched = level
        if not owed:
            untouched = _charged(draw, untouched)
        self._owed[draw.key] = (untouched, now, draw.capacity, carried)

    def _level(self, draw: Draw, now: float) -> float:
        state = self._state.get(draw.key)
        if state is None:
            return float(draw.capacity)
        return _refilled(*state, draw.capacity, now)

    def _charge(self, draw: Draw, level: float, now: float) -> float:
        if draw.cost == 0:
            return level
        level = _charged(draw, level)
        if level >= draw.capacity and draw.key not in self._owed:
            self._forget(draw.key)  # full: as if never seen
        else:
            self._set(draw.key, level, now)
        return level

    def _set(self, key: str, level: float, now: float) -> None:
        if self._state.pop(key, None) is None and len(self._state) >= self._max:
            # dicts keep insertion order: the first key is the longest untouched one
            self._forget(next(iter(self._state)))
        self._state[key] = (level, now)

    def _forget(self, key: str) -> None:
        """Back to full, or let go: Redis is owed nothing for it."""
        self._state.pop(key, None)
        self._owed.pop(key, None)


def _refilled(level: float, at: float, capacity: int, now: float) -> float:
    return min(capacity, level + max(0.0, now - at) * capacity / REFILL_MS)


def _charged(draw: Draw, level: float) -> float:
    return max(-draw.capacity * MAX_DEBT_PERIODS, min(draw.capacity, level - draw.cost))


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
