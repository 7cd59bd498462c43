"""What a rate-limit decision tells its caller: a quota per bucket, the verdict,
and a chat's reservation of tokens until its answer settles it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from relay.stores.buckets import REFILL_MS, Draw, Level, Outcome

# Bucket names; each is also its key suffix and its metrics label.
REQUESTS = "requests"
CHAT = "chat_requests"
TOKENS = "tokens"
TOKEN_EXCHANGES = "token_exchanges"
ATTESTATION_REPORTS = "attestation_reports"


class Quota(NamedTuple):
    """One bucket as a client sees it in the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_ms: int

    def taking(self, tokens: int) -> Quota:
        """As if `tokens` more had been taken in the same decision: fewer left, and
        longer until full again."""
        refill_ms = math.ceil(tokens * REFILL_MS / self.limit) if self.limit > 0 else 0
        return Quota(self.limit, max(0, self.remaining - tokens), self.reset_ms + refill_ms)


@dataclass(slots=True)
class Reservation:
    """Tokens a chat took from its client's bucket as it was admitted, until its
    answer's usage settles them or its request ends without one
    (`TokenCharges.settle`): taken back once."""

    tokens: int
    # Counted in Redis: taken there, or in this process while Redis was away (and owed
    # to it). Not: taken in this process alone, relay's loop too late for Redis.
    in_redis: bool

    def take(self) -> int:
        tokens, self.tokens = self.tokens, 0
        return tokens


class Verdict(NamedTuple):
    requests: Quota
    tokens: Quota | None  # only a chat, which spends tokens, is limited by them
    refused: str | None = None  # the bucket that refused, when one did
    retry_after_ms: int = 0
    blocked: bool = False  # refused by a limit of 0: waiting never helps
    reservation: Reservation | None = None  # a chat's, settled by `TokenCharges.settle`

    @property
    def allowed(self) -> bool:
        return self.refused is None

    @property
    def refused_type(self) -> str:
        """OpenAI's error type for the refusal: "tokens" or "requests"."""
        return TOKENS if self.refused == TOKENS else "requests"


class Bucket(NamedTuple):
    """One bucket a request draws on: its name as clients see it, and its draw."""

    name: str
    draw: Draw


def verdict(
    buckets: Sequence[Bucket], outcome: Outcome, reservation: Reservation | None = None
) -> Verdict:
    """What the client is told: the tightest request bucket and (for a chat) the token
    bucket, and, when refused, the bucket it must wait longest for (every bucket must pass).
    A refusal reserved nothing."""
    tightest = tokens = refused = None
    for pair in zip(buckets, outcome.levels, strict=True):
        bucket, level = pair
        if bucket.name == TOKENS:
            tokens = pair
        elif tightest is None or _tightness(pair) < _tightness(tightest):
            tightest = pair
        if level.wait_ms != 0 and (refused is None or _wait(level) > _wait(refused[1])):
            refused = pair
    assert tightest is not None, "every check draws on a request bucket"
    token_quota = _quota(*tokens) if tokens is not None else None
    if refused is None:
        return Verdict(_quota(*tightest), token_quota, reservation=reservation)
    bucket, level = refused
    shown = tightest if bucket.name == TOKENS else refused
    return Verdict(_quota(*shown), token_quota, bucket.name, _wait(level), level.wait_ms < 0)


def _wait(level: Level) -> int:
    # A capacity of zero never refills: tell the client to come back in a period.
    return REFILL_MS if level.wait_ms < 0 else level.wait_ms


def _tightness(pair: tuple[Bucket, Level]) -> tuple[int, int]:
    bucket, level = pair
    return level.remaining, bucket.draw.capacity


def _quota(bucket: Bucket, level: Level) -> Quota:
    return Quota(bucket.draw.capacity, max(0, level.remaining), level.reset_ms)
