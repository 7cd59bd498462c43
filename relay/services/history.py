"""Reading a client's history: cursor pages with long-poll, search, conversations."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from relay.errors import DependencyUnavailableError, InvalidRequestError
from relay.ids import uuid7_text
from relay.services.conversation_ids import (
    conversation_id_or_404,
    conversation_not_found,
    first_answer_deadline,
)
from relay.services.cursors import decode_cursor, encode_cursor, not_a_cursor
from relay.services.history_messages import public_message
from relay.services.history_watch import HistoryWatch, TooManyPollsError
from relay.services.search_slots import SearchSlots
from relay.stores.conversations import ConversationStore
from relay.stores.messages import MessageStore

MAX_QUERY_CHARS = 1000
# PostgreSQL's headline (the snippet) costs far more than linearly in the words of
# the query, above all repeated ones: "word " * 200 against a long message of that
# word kept a core busy for minutes. Queries are held to this many words, and the
# snippet marks the query's distinct words (any of them), not the query itself;
# so does the rank (relay.stores.messages bounds its cost).
MAX_QUERY_WORDS = 32
_WORDS = re.compile(r"\w+")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    data: list[dict[str, Any]]
    next_cursor: str
    has_more: bool

    def as_json(self) -> dict[str, Any]:
        return {"data": self.data, "next_cursor": self.next_cursor, "has_more": self.has_more}


def history_cursor(seq: int) -> str:
    return encode_cursor({"s": seq})


def history_position(cursor: str | None) -> int:
    """The sequence number a history cursor stands for (0: from the beginning)."""
    if not cursor:
        return 0
    seq = decode_cursor(cursor).get("s")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise not_a_cursor()
    return seq


def conversations_position(cursor: str | None) -> tuple[datetime.datetime, str] | None:
    if not cursor:
        return None
    value = decode_cursor(cursor)
    try:
        created_at, conversation_id = value["t"], value["c"]
        moment = datetime.datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("no time zone")
        # In UTC: PostgreSQL refuses offsets past ±15:59, which Python reads (to ±23:59).
        return moment.astimezone(datetime.UTC), str(uuid.UUID(conversation_id))
    # uuid.UUID(5): AttributeError; an offset moving year 1 or 9999 out of range: Overflow.
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise not_a_cursor() from None


def _page(rows: list[dict[str, Any]], more: bool, seq: int) -> Page:
    """A page of `rows`, its cursor at the last of them (at `seq` when there are none)."""
    next_seq = rows[-1]["seq"] if rows else seq
    return Page([public_message(row) for row in rows], history_cursor(next_seq), more)


class HistoryService:
    # How long past its wait a held poll's read may still answer (see `page`).
    READ_GRACE_S = 1.0

    def __init__(
        self,
        conversations: ConversationStore,
        messages: MessageStore,
        watch: HistoryWatch,
        search_slots: SearchSlots | None = None,
    ) -> None:
        self.conversations = conversations
        self.messages = messages
        self.watch = watch
        self.search_slots = search_slots or SearchSlots.for_pool(messages.pool_size)

    async def require_conversation(self, client_id: str, conversation_id: str) -> str:
        """The id, if it names one of this client's conversations; 404 otherwise."""
        checked = conversation_id_or_404(conversation_id)
        if not await self.conversations.exists(client_id, checked):
            raise conversation_not_found()
        return checked

    async def page(
        self,
        client_id: str,
        *,
        after: str | None,
        limit: int,
        conversation_id: str | None = None,
        wait: float = 0.0,
        stops: tuple[asyncio.Event, ...] = (),
    ) -> Page:
        """Messages after the cursor, oldest first; with `wait`, an empty page is held
        until this client commits something new, the time is up, or one of `stops` is set
        (TooManyPollsError past HistoryWatch.MOST_HELD_PER_CLIENT of this client's)."""
        seq = history_position(after)
        if not wait:
            if conversation_id is not None:
                conversation_id = await self.require_conversation(client_id, conversation_id)
            rows, more = await self.messages.page(
                client_id, after_seq=seq, limit=limit, conversation_id=conversation_id
            )
            return _page(rows, more, seq)
        deadline = asyncio.get_running_loop().time() + wait
        # Its reads get what is left of the wait and READ_GRACE_S (the first, and one
        # when the listener went down or came back, or at its time while it is down):
        # a PostgreSQL that stopped answering must not hold the poll
        # RELAY_DATABASE_TIMEOUT past its time. A read after a commit of this client's
        # was announced gets RELAY_DATABASE_TIMEOUT, as any read: PostgreSQL just
        # committed and announced it, so it is up, and slow at worst. A read cut short
        # returns no rows: the cursor stays where it was.
        bound = asyncio.timeout_at(deadline + self.READ_GRACE_S)
        try:
            async with bound:
                if conversation_id is not None:
                    conversation_id = await self.require_conversation(client_id, conversation_id)
                if not self.watch.has_room(client_id):
                    raise TooManyPollsError()
                return await self._held_page(
                    client_id, seq, limit, conversation_id, deadline, bound, stops
                )
        except TimeoutError:
            if not bound.expired():
                raise
            log.warning("postgres did not answer a held history poll by its time")
            raise DependencyUnavailableError(
                "The database did not answer within the poll's wait; try again shortly.",
                reason="history read past its poll's wait",
            ) from None

    async def _held_page(
        self,
        client_id: str,
        seq: int,
        limit: int,
        conversation_id: str | None,
        deadline: float,
        bound: asyncio.Timeout,
        stops: tuple[asyncio.Event, ...],
    ) -> Page:
        """`page` once held, its reads within `bound` (see `page`)."""
        loop = asyncio.get_running_loop()
        announced = False
        while True:
            # Registered before reading: a commit between the read and the wait still wakes us.
            waiter = self.watch.waiter(client_id)
            try:
                bound.reschedule(None if announced else deadline + self.READ_GRACE_S)
                rows, more = await self.messages.page(
                    client_id, after_seq=seq, limit=limit, conversation_id=conversation_id
                )
                remaining = deadline - loop.time()
                if rows or remaining <= 0 or any(stop.is_set() for stop in stops):
                    break
                await _first_of((waiter.woken, *stops), remaining)
                if not waiter.woken.is_set() and self.watch.live:
                    # Nothing of this client's committed since the read: nothing new to
                    # read again, and a database that stopped answering meanwhile must
                    # not hold the poll past its time (a 503 a database timeout later).
                    break
                announced = waiter.announced
            finally:
                self.watch.forget(client_id, waiter)
        return _page(rows, more, seq)

    async def context(
        self,
        client_id: str,
        conversation_id: str | None,
        budget_chars: int,
        system: str | None = None,
    ) -> tuple[str, str | None, list[dict[str, Any]]]:
        """(conversation id, the system message, recent messages) for the next turn: the
        request's `system` when it gives one (the budget counts that one), else the
        stored one; a new id, `system` and nothing more when no conversation is named."""
        if conversation_id is None:
            return uuid7_text(), system, []
        checked = await self.require_conversation(client_id, conversation_id)
        system, rows = await self.conversations.context(client_id, checked, budget_chars, system)
        return checked, system, rows

    async def reserve_messages(self, count: int) -> tuple[list[int], datetime.datetime]:
        return await self.messages.reserve(count)

    async def search(
        self, client_id: str, query: str, *, limit: int, conversation_id: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """The best matches, and whether more were found than they (by `limit` or the
        read budget of relay.stores.message_reads)."""
        query = query.replace("\x00", " ").strip()
        if not query:
            raise InvalidRequestError("q is required.", param="q")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidRequestError(f"q must be at most {MAX_QUERY_CHARS} characters.", param="q")
        try:
            query.encode()
        except UnicodeEncodeError:
            raise InvalidRequestError("q is not valid text.", param="q") from None
        words = [word.lower() for word in _WORDS.findall(query)]
        if len(words) > MAX_QUERY_WORDS:
            raise InvalidRequestError(f"q may hold at most {MAX_QUERY_WORDS} words.", param="q")
        if conversation_id is not None:
            conversation_id = await self.require_conversation(client_id, conversation_id)
        async with self.search_slots.slot(client_id):
            rows, more = await self.messages.search(
                client_id,
                query,
                marked=" or ".join(dict.fromkeys(word for word in words if word != "or")),
                limit=limit,
                conversation_id=conversation_id,
            )
        found = [
            {**public_message(row), "rank": row["rank"], "snippet": row["snippet"]} for row in rows
        ]
        return found, more

    async def list_conversations(self, client_id: str, *, after: str | None, limit: int) -> Page:
        rows, more = await self.conversations.list_page(
            client_id, limit=limit, before=conversations_position(after)
        )
        cursor = ""
        if rows:
            cursor = encode_cursor(
                {"t": rows[-1]["created_at"].isoformat(), "c": str(rows[-1]["id"])}
            )
        return Page(rows, cursor or (after or ""), more)

    async def get_conversation(self, client_id: str, conversation_id: str) -> dict[str, Any]:
        found = await self.conversations.get(client_id, conversation_id_or_404(conversation_id))
        if found is None:
            raise conversation_not_found()
        return {**found, "messages": [public_message(row) for row in found["messages"]]}

    async def delete_conversation(
        self, client_id: str, conversation_id: str, *, horizon_s: float
    ) -> None:
        """Erase the conversation; 404 if there is none. An id relay may have made for
        this client within `horizon_s` (answer_horizon_s) may name one whose first
        answer has not committed yet: that answer does not create it."""
        checked = conversation_id_or_404(conversation_id)
        until = first_answer_deadline(checked, horizon_s)
        if not await self.conversations.delete(client_id, checked, tombstone_until=until):
            raise conversation_not_found()


async def _first_of(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
