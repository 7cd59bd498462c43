"""Conversation ids: how relay spells them, and how long after relay made one (a
UUIDv7, named in Relay-Conversation-Id before its first answer commits) that
answer may still commit and create the conversation."""

from __future__ import annotations

import datetime
import time
import uuid

from relay.config import Settings
from relay.errors import NotFoundError
from relay.upstreams.config import DEFAULT_TIMEOUT_S
from relay.upstreams.pipe import SEND_SECONDS

# Timeouts of a group commit an answer may wait for: its batch and, its COMMIT lost,
# the wait for its server process to end (the batch may commit until then:
# relay.services.batch_write); the query for answers that can no longer be
# written; the batch again; then itself alone, and that wait again.
COMMIT_TRIES = 6
# How far apart the clocks of relay's instances and PostgreSQL may be.
CLOCK_SKEW_S = 60.0


def answer_horizon_s(settings: Settings) -> float:
    """How long after a new conversation's id was made its first answer may still
    commit: the wait for the provider's headers, the stream, a last send to a slow
    client, a drain at shutdown, the commit's tries, and the clocks' skew."""
    provider_s = max(
        (upstream.timeout_s for upstream in settings.upstreams), default=DEFAULT_TIMEOUT_S
    )
    return (
        provider_s
        + settings.max_answer_seconds
        + SEND_SECONDS
        + settings.drain_timeout
        + COMMIT_TRIES * settings.database_timeout
        + CLOCK_SKEW_S
    )


def uuid7_seconds(conversation_id: str) -> float | None:
    """When a UUIDv7 (as relay makes conversation ids) was made; None for another kind."""
    value = uuid.UUID(conversation_id)
    if value.version != 7 or value.variant != uuid.RFC_4122:
        return None
    return (value.int >> 80) / 1000


def first_answer_deadline(conversation_id: str, horizon_s: float) -> datetime.datetime | None:
    """Until when the first answer of `conversation_id` may still commit, if relay may
    have made the id within `horizon_s` (answer_horizon_s); None if it cannot have."""
    made, now = uuid7_seconds(conversation_id), time.time()
    if made is None or not now - horizon_s <= made <= now + CLOCK_SKEW_S:
        return None
    return datetime.datetime.fromtimestamp(made + horizon_s, datetime.UTC)


def conversation_not_found() -> NotFoundError:
    return NotFoundError("No conversation with that id.", code="conversation_not_found")


def canonical_conversation_id(text: str) -> str | None:
    """A conversation id as relay writes it (a uuid in lower case, dashed), however it
    was spelt; None if it is no uuid."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def conversation_id_or_404(text: str) -> str:
    """A well-formed conversation id; anything else cannot name one of the caller's."""
    checked = canonical_conversation_id(text)
    if checked is None:
        raise conversation_not_found()
    return checked
