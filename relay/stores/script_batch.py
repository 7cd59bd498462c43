"""One Lua script run for many concurrent callers: their EVALSHAs share pipelined round trips."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_Call = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatch:
    """EVALSHA by pipeline: whatever callers queued while one batch was out goes as the next.

    Each caller still sends exactly one command, but a burst of requests costs
    one round trip and one connection instead of one each, so Redis answers
    within its timeout even when hundreds of requests arrive together. A
    caller that stops waiting (its timeout) simply drops out of its batch.
    """

    def __init__(self, redis: Redis, script: str, *, timeout: float) -> None:
        self.redis = redis
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.timeout = timeout
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """SCRIPT LOAD, so EVALSHA finds it (Redis forgets scripts when it restarts)."""
        await self.redis.script_load(self.script)

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="relay-redis-script-batch")
        return await future

    async def close(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                batch = [call for call in batch if not call[2].done()]
                if not batch:
                    continue
                try:
                    # Bounded, so a hung Redis cannot hold back the batches behind this one.
                    async with asyncio.timeout(self.timeout):
                        replies = await self._run(batch)
                except Exception as exc:  # every caller of the batch sees the failure
                    replies = [exc] * len(batch)
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, BaseException):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def _run(self, batch: list[_Call]) -> list[Any]:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self.load()
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
