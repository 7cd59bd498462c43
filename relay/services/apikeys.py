"""API keys (`rk_<key id>_<secret>`): minting, parsing and bcrypt checks off the event loop."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass

import bcrypt

PREFIX = "rk_"
# Hex on both sides, so the key splits on "_" without ambiguity. The 48-char
# secret (192 bits) stays under bcrypt's 72-byte limit.
_KEY = re.compile(r"rk_([0-9a-f]{16})_([0-9a-f]{48})")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.key_id}_{self.secret}"

    def __repr__(self) -> str:
        return f"ApiKey(key_id={self.key_id!r}, secret='***')"

    @classmethod
    def new(cls) -> ApiKey:
        return cls(secrets.token_hex(8), secrets.token_hex(24))

    @classmethod
    def parse(cls, text: str) -> ApiKey | None:
        match = _KEY.fullmatch(text)
        return cls(match.group(1), match.group(2)) if match else None


class KeyHasher:
    """bcrypt in the default executor; a dummy hash keeps unknown keys as slow as known ones."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self._dummy = bcrypt.hashpw(secrets.token_hex(24).encode(), bcrypt.gensalt(rounds))

    async def hash(self, secret: str) -> str:
        loop = asyncio.get_running_loop()
        salt = bcrypt.gensalt(self.rounds)
        hashed = await loop.run_in_executor(None, bcrypt.hashpw, secret.encode(), salt)
        return hashed.decode()

    async def check(self, secret: str, hashed: str | None) -> bool:
        """True when `secret` matches; with no hash, spend the same time and say no."""
        target = hashed.encode() if hashed else self._dummy
        loop = asyncio.get_running_loop()
        # bcrypt reads 72 bytes (a real secret is 48) and bcrypt 5 raises past that:
        # a longer guess must cost the same hash as any other, not a quick refusal.
        candidate = secret.encode()[:72]
        try:
            matches = await loop.run_in_executor(None, bcrypt.checkpw, candidate, target)
        except ValueError:  # a corrupt stored hash is a refusal, not a crash
            return False
        return matches and hashed is not None
