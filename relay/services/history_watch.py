"""Long-poll wake-ups: who is waiting for a client's next history commit, woken by NOTIFY."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from relay.errors import RateLimitError
from relay.stores.history import EVERYONE, HISTORY_CHANNEL
from relay.stores.notifications import Notifications


class Waiter:
    """One held poll's wake-up: `woken` is set at its client's next commit announced by
    NOTIFY (then `announced` is true too), or when the listener goes down or comes back,
    since commits may have gone unannounced meanwhile."""

    __slots__ = ("announced", "woken")

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.announced = False

    def announce(self) -> None:
        self.announced = True
        self.woken.set()


class HistoryWatch:
    """Subscribes to the history channel; must be built before the listener starts."""

    # Every commit of a client wakes each of its held polls, to read again: a client
    # holding thousands (or polling one conversation while committing to others) made
    # every commit of its cost thousands of queries. Past this many, a poll is refused.
    MOST_HELD_PER_CLIENT = 32

    def __init__(self, notifications: Notifications) -> None:
        self._waiters: defaultdict[str, set[Waiter]] = defaultdict(set)
        self._notifications = notifications
        notifications.subscribe(HISTORY_CHANNEL, self._on_notify)
        # While the listener was down, commits may have gone unannounced.
        notifications.on_reset(self._wake_everyone)

    @property
    def live(self) -> bool:
        """Whether commits are announced now. The listener going down or coming back
        wakes every waiter: one not woken while it is live now was waiting for a commit
        of its client that was not made (or whose NOTIFY is still on its way)."""
        return self._notifications.live

    def waiter(self, client_id: str) -> Waiter:
        """Woken at this client's next commit; register before reading, so none is missed."""
        waiter = Waiter()
        self._waiters[client_id].add(waiter)
        return waiter

    def has_room(self, client_id: str) -> bool:
        """Whether another poll of this client may be held (see MOST_HELD_PER_CLIENT)."""
        return len(self._waiters.get(client_id, ())) < self.MOST_HELD_PER_CLIENT

    def forget(self, client_id: str, waiter: Waiter) -> None:
        waiters = self._waiters.get(client_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[client_id]

    def _on_notify(self, payload: str) -> None:
        # EVERYONE, from an older instance, announces a commit of clients it did not name.
        names = self._waiters.keys() if payload == EVERYONE else payload.split(",")
        for client_id in names:
            for waiter in self._waiters.get(client_id, ()):
                waiter.announce()

    def _wake_everyone(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.woken.set()


class TooManyPollsError(RateLimitError):
    """This client already has as many polls held on this instance as one may."""

    code = "too_many_polls"

    def __init__(self) -> None:
        super().__init__(
            f"You have {HistoryWatch.MOST_HELD_PER_CLIENT} long-polls held, as many as relay"
            " holds for one client; retry after Retry-After, or poll without wait.",
            headers={"Retry-After": "1"},
        )
