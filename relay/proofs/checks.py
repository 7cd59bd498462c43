"""What a verification says: a check that held (or a note), or the first that failed;
and the strict reading of the hex every proof is written in."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")

Report = dict[str, Any]


class VerificationError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Check(NamedTuple):
    held: bool  # False: a note about something that could not be checked here
    text: str


def check_algo(report: Report, whose: str) -> None:
    if report.get("signing_algo") != "ed25519":
        raise VerificationError(f"key: {whose} signing_algo is {report.get('signing_algo')!r}")


def strict_hex(value: Any, size: int | None, *, lower: bool = False) -> bytes:
    # Strict: bytes.fromhex would also accept spaces inside the string.
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError("expected a hex string")
    if lower and value != value.lower():
        raise ValueError("expected lower-case hex")
    data = bytes.fromhex(value)
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes, got {len(data)}")
    return data
