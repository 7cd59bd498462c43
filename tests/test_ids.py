"""Row ids are UUIDv7: well-formed, unguessable, and in the order they were made."""

import time
import uuid

from relay.ids import uuid7_hex, uuid7_text
from relay.services.receipts import RECEIPT_HEADER
from tests.api_calls import client_with_token
from tests.history_calls import CONVERSATION, chat


def uuid7() -> uuid.UUID:
    return uuid.UUID(uuid7_text())


def test_uuid7_has_the_rfc_9562_layout():
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after  # the first 48 bits: Unix time in ms
    assert str(made) == str(uuid.UUID(str(made)))  # the usual text form, lower case


def test_the_two_text_forms_are_those_of_uuid():
    digits = uuid7_hex()
    assert len(digits) == 32 and digits == uuid.UUID(hex=digits).hex
    text = uuid7_text()
    assert text == str(uuid.UUID(text))


def test_uuid7_ids_made_later_sort_later_in_every_form():
    first = [uuid7() for _ in range(100)]
    time.sleep(0.002)
    later = uuid7()
    assert all(later > each for each in first)
    # Fixed-width lowercase hex: the text forms PostgreSQL indexes sort the same way.
    assert all(str(later) > str(each) and later.hex > each.hex for each in first)


def test_uuid7_random_bits_differ_within_a_millisecond():
    ids = [uuid7() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    rand_a = {(each.int >> 64) & 0xFFF for each in ids}
    rand_b = {each.int & ((1 << 62) - 1) for each in ids}
    assert len(rand_a) > 1000 and len(rand_b) == len(ids)


async def test_new_conversations_and_receipts_get_uuid7_ids(http, simulator):
    _, token = await client_with_token(http)
    response = await chat(http, token, "hello")
    assert response.status == 200
    assert uuid.UUID(response.headers[CONVERSATION]).version == 7
    assert uuid.UUID(hex=response.headers[RECEIPT_HEADER]).version == 7
