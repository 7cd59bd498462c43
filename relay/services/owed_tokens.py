"""Owed tokens: per client, the token charges Redis missed while it was away."""

from __future__ import annotations

from relay.stores.clients import Client

# Past this many clients one is let go (some 200 bytes each).
MAX_OWING = 100_000


class OwedTokens:
    """Per client, the sum of the token charges (debits and credits) that Redis missed.

    This process's buckets took them at once; Redis, shared by every instance, is
    charged them in one go per client when it is back, so an outage forgives no usage.
    Past `max_owing` clients the least recently charged credit is dropped, and only
    when none is left the least recently charged debt forgiven: a credit only gives
    back reservations Redis took before the outage (each at most a minute's budget,
    never lifting a bucket past its limit), while a debt may be a day's budget.
    """

    def __init__(self, max_owing: int = MAX_OWING) -> None:
        self._max = max_owing
        # Each in insertion order: the least recently charged first.
        self._debts: dict[str, tuple[Client, int]] = {}
        self._credits: dict[str, tuple[Client, int]] = {}

    def __len__(self) -> int:
        return len(self._debts) + len(self._credits)

    def add(self, client: Client, cost: int) -> None:
        entry = self._debts.pop(client.id, None) or self._credits.pop(client.id, None)
        if entry is None and len(self) >= self._max:
            dropped = self._credits or self._debts
            del dropped[next(iter(dropped))]
        total = cost + (entry[1] if entry is not None else 0)
        if total:
            (self._debts if total > 0 else self._credits)[client.id] = (client, total)

    def take(self) -> list[tuple[Client, int]]:
        """Everything owed, forgotten here: the caller charges it."""
        owed = [*self._debts.values(), *self._credits.values()]
        self._debts, self._credits = {}, {}
        return owed
