"""Ids of the rows relay creates: UUIDv7 (RFC 9562), ordered by the time they were made.

A random id (UUIDv4) lands on a random page of every index it keys, so each
insert reads and dirties a page of its own and, after every checkpoint, writes
that whole page to the WAL again; as the tables grow past memory each insert
also waits for a read. Time-ordered ids append at one end of their indexes:
conversations, their messages' (conversation, seq) entries and receipts
(measured: a recorded answer's WAL fell from about 17 KB to 4 KB, with 004).
74 random bits keep them unguessable. The millisecond an id carries is when its
row began: a receipt id says no more than its `served_at`; a conversation id
tells whoever holds it (its client, and anyone shown one of its receipts) when
the conversation started.
"""

from __future__ import annotations

import os
import time

_RAND_B = (1 << 62) - 1


def uuid7_int() -> int:
    """48 bits of Unix time in ms, the version (7), 12 random bits, the variant, 62 random bits."""
    milliseconds = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b
    return (
        (milliseconds & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & _RAND_B
    )


# Formatted directly: a uuid.UUID made only to print it costs more than the id itself.
def uuid7_hex() -> str:
    """A UUIDv7 as 32 lower-case hex digits (receipt ids)."""
    return f"{uuid7_int():032x}"


def uuid7_text() -> str:
    """A UUIDv7 in its usual text form, 8-4-4-4-12 (conversation ids)."""
    digits = uuid7_hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
