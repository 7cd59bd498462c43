"""History retention: messages past RELAY_HISTORY_RETENTION_DAYS are purged in the background."""

from __future__ import annotations

import asyncio
import datetime
import logging

from relay.errors import DependencyUnavailableError
from relay.services.turns import title_from
from relay.stores.database import QueryError
from relay.stores.message_purge import MessagePurge

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
PURGE_BATCH = 1000
# A run that failed (the database briefly away) is tried again this long after, then
# twice as long after each failure in a row, never longer than the interval: soon
# after a blip, seldom while the database stays down. Runs never overlap: the next is
# timed from the end of the one before.
RETRY_FIRST_S = 30.0


def retry_delay(failures: int, first_s: float, most_s: float) -> float:
    """How long to wait after the `failures`-th failed run in a row."""
    # Doublings past the cap change nothing; bounded, they cannot overflow a float.
    return min(most_s, first_s * 2 ** min(max(failures - 1, 0), 64))


class HistoryRetention:
    def __init__(
        self,
        messages: MessagePurge,
        days: int,
        *,
        interval_s: float = PURGE_INTERVAL_S,
        retry_s: float = RETRY_FIRST_S,
        batch: int = PURGE_BATCH,
    ) -> None:
        self.messages = messages
        self.days = days
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.batch = batch

    async def purge_once(self) -> int:
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=self.days)
        # A title is its conversation's first question: content, gone with it. A
        # conversation kept for newer messages is titled by its oldest one left.
        deleted, retitled = await self.messages.purge(cutoff, batch=self.batch, title=title_from)
        if deleted:
            log.info(
                "history purged",
                extra={"messages": deleted, "retitled": retitled, "days": self.days},
            )
        return deleted

    async def run(self) -> None:
        """Purge now and every `interval_s`; a failed run is logged and tried again
        sooner (retry_delay)."""
        failures = 0
        while True:
            try:
                await self.purge_once()
                failures = 0
            except Exception as exc:
                failures += 1
                counts = {"failures": failures, "retry_s": self._delay(failures)}
                if isinstance(exc, DependencyUnavailableError | QueryError):
                    # The type only: a driver's message can quote the values of a row.
                    log.warning(
                        "history purge failed", extra={"error": type(exc).__name__, **counts}
                    )
                else:
                    # A bug, not an outage: worth its traceback, but no reason to stop
                    # purging for good, which would leave history kept past its retention.
                    log.exception("history purge failed", extra=counts)
            await asyncio.sleep(self._delay(failures))

    def _delay(self, failures: int) -> float:
        """Until the next run: the interval, or after failed ones a shorter wait."""
        if not failures:
            return self.interval_s
        return retry_delay(failures, self.retry_s, self.interval_s)
