"""History as a part of every group commit: the conversation and message rows of stored answers."""

from __future__ import annotations

from collections.abc import Sequence

from relay.errors import ConversationDeletedError, RelayError
from relay.services.answers import Answer
from relay.services.turns import title_of, turn_messages
from relay.stores.database import Batch, Database
from relay.stores.history import (
    Turn,
    any_turn_stored,
    gone_conversations,
    notify_clients,
    write_turns,
)


class HistoryPart:
    """Writes only answers whose content may be kept (`answer.store`)."""

    def wants(self, answer: Answer) -> bool:
        return answer.store

    async def write(self, tx: Batch, answers: Sequence[Answer]) -> None:
        turns = [_turn(answer) for answer in answers if answer.store]
        if not turns:
            return
        write_turns(tx, turns)
        notify_clients(tx, [turn.client_id for turn in turns])

    async def unwritable(
        self, db: Database, answers: Sequence[Answer]
    ) -> list[tuple[Answer, RelayError]]:
        stored = [answer for answer in answers if answer.store]
        gone = await gone_conversations(db, [_turn(answer) for answer in stored])
        return [
            (answer, ConversationDeletedError())
            for answer in stored
            if (answer.client.id, answer.conversation_id) in gone
        ]

    async def written(self, db: Database, answers: Sequence[Answer]) -> bool | None:
        stored = [answer for answer in answers if answer.store]
        message_ids = [answer.message_id for answer in stored if answer.message_id is not None]
        # A continued conversation was there before; its new rows have no id known
        # before they commit (a request id is the client's to choose, and to repeat).
        new = [
            answer.conversation_id
            for answer in stored
            if answer.conversation_id is not None and not answer.continues_conversation
        ]
        if not (message_ids or new):
            return None
        return await any_turn_stored(db, message_ids, new)


def _turn(answer: Answer) -> Turn:
    assert answer.conversation_id is not None, "a stored answer has a conversation"
    messages = turn_messages(answer)
    return Turn(
        client_id=answer.client.id,
        conversation_id=answer.conversation_id,
        continued=answer.continues_conversation,
        title=title_of(messages),
        model=answer.route.model,
        request_id=answer.request_id,
        messages=messages,
    )
