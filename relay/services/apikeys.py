"""API keys (`rk_<key id>_<secret>`): minting, parsing and bcrypt checks off the event loop."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import bcrypt

from relay.errors import BusyError

PREFIX = "rk_"
# Hex on both sides, so the key splits on "_" without ambiguity. The 48-char
# secret (192 bits) stays under bcrypt's 72-byte limit.
_KEY = re.compile(r"rk_([0-9a-f]{16})_([0-9a-f]{48})")
# A bcrypt hash names its cost: "$2b$12$<salt and hash>".
_COST = re.compile(r"\$2[abxy]?\$(\d\d)\$")
# Checks that may wait for a bcrypt thread, per thread: at cost 12 (~0.26 s a check)
# an admitted exchange waits at most about 1.3 s, whatever a crowd of guesses does.
QUEUED_PER_WORKER = 4

T = TypeVar("T")


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


class KeyChecksBusyError(BusyError):
    """Every bcrypt thread is busy and the line for them is full: refused at once (a
    503, not a 429: the caller exceeded nothing; its own 429 says "this address asked
    too often")."""

    code = "key_checks_busy"

    def __init__(self) -> None:
        super().__init__(
            "relay is checking as many API keys as it can at once; retry after Retry-After."
        )


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class BcryptPool:
    """bcrypt's own threads (it releases the GIL: one per core), so key checks wait
    neither behind the default executor's other work (DNS) nor behind an unbounded
    crowd: past `capacity` checks running or waiting, the next is refused at once."""

    def __init__(self, executor: ThreadPoolExecutor, *, workers: int, queued: int) -> None:
        self.executor = executor
        self.capacity = workers + queued
        # A check holds its place from before it is submitted until its thread is done
        # with it (or it is cancelled before it ran): a caller that left still holds one.
        self._taken = 0
        self._lock = threading.Lock()

    @classmethod
    def for_cores(cls) -> BcryptPool:
        workers = usable_cores()
        executor = ThreadPoolExecutor(workers, thread_name_prefix="relay-bcrypt")
        return cls(executor, workers=workers, queued=QUEUED_PER_WORKER * workers)

    @property
    def taken(self) -> int:
        """Checks running or waiting now."""
        return self._taken

    async def run(self, fn: Callable[..., T], *args: Any, bounded: bool = True) -> T:
        """`fn(*args)` on a bcrypt thread; KeyChecksBusyError if `bounded` and the line is full."""
        if bounded:
            with self._lock:
                if self._taken >= self.capacity:
                    raise KeyChecksBusyError()
                self._taken += 1
        try:
            future = self.executor.submit(fn, *args)
        except BaseException:
            if bounded:
                self._leave()
            raise
        if bounded:
            future.add_done_callback(self._leave)
        return await asyncio.wrap_future(future)

    def _leave(self, _: object = None) -> None:
        with self._lock:
            self._taken -= 1

    def shutdown(self) -> None:
        """Cancel what waits, let the threads end when their check does; never blocks."""
        self.executor.shutdown(wait=False, cancel_futures=True)


class KeyHasher:
    """bcrypt off the loop; a dummy hash keeps unknown keys as slow as known ones.

    The dummy is made at the current cost (`rounds`), which a stored hash made at
    another one reaches when its key is next used (`outdated`, then rehashed), so
    a change of RELAY_BCRYPT_ROUNDS leaves a key id's existence readable from the
    time of a check only while its key goes unused.

    With a pool, checks run there and are refused when its line is full (hashing a
    new key, an operator's act, waits its turn instead); without one (the command
    line) they run in the default executor.
    """

    def __init__(self, rounds: int, pool: BcryptPool | None = None) -> None:
        self.rounds = rounds
        self.pool = pool
        self._dummy = bcrypt.hashpw(secrets.token_hex(24).encode(), bcrypt.gensalt(rounds))

    async def _run(self, fn: Callable[..., T], *args: Any, bounded: bool) -> T:
        if self.pool is None:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        return await self.pool.run(fn, *args, bounded=bounded)

    async def hash(self, secret: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        hashed = await self._run(bcrypt.hashpw, secret.encode(), salt, bounded=False)
        return hashed.decode()

    def outdated(self, hashed: str) -> bool:
        """Whether a stored hash was made at another cost than the current one."""
        cost = _COST.match(hashed)
        return cost is not None and int(cost.group(1)) != self.rounds

    async def check(self, secret: str, hashed: str | None) -> bool:
        """True when `secret` matches; with no hash, spend the same time and say no."""
        target = hashed.encode() if hashed else self._dummy
        # bcrypt reads 72 bytes (a real secret is 48) and bcrypt 5 raises past that.
        candidate = secret.encode()[:72]
        try:
            matches = await self._run(bcrypt.checkpw, candidate, target, bounded=True)
        except ValueError:  # a corrupt stored hash is a refusal, not a crash
            return False
        return matches and hashed is not None
