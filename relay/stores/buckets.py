"""Token buckets: what a request asks of each bucket, and what the buckets answer.

Every bucket refills continuously from empty to full over `REFILL_MS`, so a
limit of N per minute allows a burst of N and then one more every 60/N s.
The Redis script and the in-process fallback follow the same rules.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

REFILL_MS = 60_000
# A bucket owes at most a day's refill: however much is charged (an answer's usage
# is its provider's word), its level stays above -MAX_DEBT_PERIODS * capacity, so a
# bucket's expiry in Redis stays a number its script can write.
MAX_DEBT_PERIODS = 1440


class Mode(enum.IntEnum):
    TAKE = 0  # passes with `cost` tokens in the bucket, and takes them
    GATE = 1  # passes while the level is not below zero, then takes `cost` (it may fall below)
    DEBIT = 2  # always passes and takes `cost`, so the level may fall below zero


class Draw(NamedTuple):
    """One bucket's part in a request."""

    key: str
    capacity: int
    cost: int = 1  # a negative cost gives back, but never lifts the bucket past capacity
    mode: Mode = Mode.TAKE


class Level(NamedTuple):
    """One bucket after a request: whole tokens left, ms until full, ms until it would pass."""

    remaining: int
    reset_ms: int
    wait_ms: int  # 0: passed; -1: never (a capacity of zero)


class Outcome(NamedTuple):
    """All-or-nothing: when one bucket refuses, none is charged."""

    allowed: bool
    levels: tuple[Level, ...]
