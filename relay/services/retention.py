"""History retention: messages past RELAY_HISTORY_RETENTION_DAYS are purged in the background."""

from __future__ import annotations

import asyncio
import datetime
import logging

from relay.errors import DependencyUnavailableError
from relay.services.turns import title_from
from relay.stores.database import QueryError
from relay.stores.messages import MessageStore

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
PURGE_BATCH = 1000


class HistoryRetention:
    def __init__(
        self,
        messages: MessageStore,
        days: int,
        *,
        interval_s: float = PURGE_INTERVAL_S,
        batch: int = PURGE_BATCH,
    ) -> None:
        self.messages = messages
        self.days = days
        self.interval_s = interval_s
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
        """Purge now and every `interval_s`; a failed run is logged and retried next time."""
        while True:
            try:
                await self.purge_once()
            except (DependencyUnavailableError, QueryError) as exc:
                # The type only: a driver's message can quote the values of a row.
                log.warning("history purge failed", extra={"error": type(exc).__name__})
            except Exception:
                # A bug, not an outage: worth its traceback, but no reason to stop
                # purging for good, which would leave history kept past its retention.
                log.exception("history purge failed")
            await asyncio.sleep(self.interval_s)
