"""Token charges Redis is owed: settled while it was away, paid once it answers again."""

from __future__ import annotations

from relay.stores.clients import Client

# Past this many clients the longest owing is forgiven (some 200 bytes each).
MAX_OWING = 100_000


class OwedTokens:
    """Per client, the sum of the token charges (debits and credits) that Redis missed.

    This process's buckets took them at once; Redis, shared by every instance, is
    charged them in one go per client when it is back, so an outage forgives no usage.
    """

    def __init__(self, max_owing: int = MAX_OWING) -> None:
        self._max = max_owing
        self._owed: dict[str, tuple[Client, int]] = {}

    def __len__(self) -> int:
        return len(self._owed)

    def add(self, client: Client, cost: int) -> None:
        entry = self._owed.pop(client.id, None)
        if entry is None and len(self._owed) >= self._max:
            del self._owed[next(iter(self._owed))]  # insertion order: the longest owing
        total = cost + (entry[1] if entry is not None else 0)
        if total:
            self._owed[client.id] = (client, total)

    def take(self) -> list[tuple[Client, int]]:
        """Everything owed, forgotten here: the caller charges it."""
        owed, self._owed = self._owed, {}
        return list(owed.values())
