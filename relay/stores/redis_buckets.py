"""Token buckets in Redis: one Lua script checks and charges all of a request's buckets."""

from __future__ import annotations

from redis.asyncio import Redis

from relay.stores.buckets import REFILL_MS, Draw, Level, Outcome, draw_arguments
from relay.stores.script_batch import ScriptBatch

# The clock is Redis's own TIME, so every relay instance sees the same time.
# Each bucket is a hash {l: level, t: ms}; a missing one is full. A bucket is
# written only when charged, and expires once it would have refilled, so idle
# clients leave nothing behind. Mirrored by relay.stores.local_buckets.
SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local period = tonumber(ARGV[1])
local levels, waits = {}, {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local mode = tonumber(ARGV[i * 3 + 1])
  local level = capacity
  local state = redis.call('HMGET', key, 'l', 't')
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    level = math.min(capacity, tonumber(state[1]) + elapsed * capacity / period)
  end
  local wait = 0
  if mode ~= 2 then
    local need = 0
    if mode == 0 then need = cost end
    if capacity <= 0 then
      wait = -1
    elseif level < need then
      wait = math.max(1, math.ceil((need - level) * period / capacity))
    end
  end
  if wait ~= 0 then allowed = 0 end
  levels[i] = level
  waits[i] = wait
end
local reply = {allowed}
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local mode = tonumber(ARGV[i * 3 + 1])
  local level = levels[i]
  if allowed == 1 and mode ~= 1 and cost > 0 then
    level = level - cost
    local ttl = period
    if capacity > 0 then
      ttl = math.ceil((capacity - level) * period / capacity) + 1000
    end
    redis.call('HSET', key, 'l', level, 't', now)
    redis.call('PEXPIRE', key, ttl)
  end
  local reset = 0
  if capacity > 0 and level < capacity then
    reset = math.ceil((capacity - level) * period / capacity)
  end
  reply[#reply + 1] = math.floor(level)
  reply[#reply + 1] = reset
  reply[#reply + 1] = waits[i]
end
return reply
"""


class RedisBuckets:
    """Buckets shared by every relay instance on this Redis: one EVALSHA per request."""

    def __init__(self, redis: Redis, *, timeout: float) -> None:
        self._script = ScriptBatch(redis, SCRIPT, timeout=timeout)

    async def load(self) -> None:
        await self._script.load()

    async def close(self) -> None:
        await self._script.close()

    async def draw(self, draws: list[Draw]) -> Outcome:
        keys = [draw.key for draw in draws]
        reply = await self._script.call(keys, [REFILL_MS, *draw_arguments(draws)])
        return _outcome(reply, len(draws))


def _outcome(reply: list[int], count: int) -> Outcome:
    if len(reply) != 1 + 3 * count:
        raise ValueError(f"unexpected rate-limit script reply of {len(reply)} items")
    levels = tuple(
        Level(int(reply[i]), int(reply[i + 1]), int(reply[i + 2])) for i in range(1, len(reply), 3)
    )
    return Outcome(bool(reply[0]), levels)
