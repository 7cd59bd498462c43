"""A caller's nonce for an attestation report: 32 bytes, written as 64 hex characters."""

from __future__ import annotations

import re

NONCE_SIZE = 32
_NONCE_HEX = re.compile(r"[0-9a-fA-F]{64}")


def parse_nonce(text: str | None) -> bytes | None:
    """A caller's nonce: None when absent, else exactly 64 hex characters (32 bytes)."""
    if text is None:
        return None
    # fullmatch, not bytes.fromhex alone: fromhex would skip embedded spaces.
    if not _NONCE_HEX.fullmatch(text):
        raise ValueError("nonce must be exactly 64 hex characters (32 bytes)")
    return bytes.fromhex(text)
