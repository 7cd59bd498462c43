"""The Lua script that decides a batch of token-bucket calls in Redis, and its wire
format: how a call is encoded for it, how its reply is read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.stores.buckets import MAX_DEBT_PERIODS, REFILL_MS, Draw, Level, Outcome

# The clock is Redis's own TIME, so every relay instance sees the same time.
# Each bucket is a hash {l: level, t: ms}; a missing one is full. A bucket is
# written only when charged, and expires once it would have refilled, so idle
# clients leave nothing behind. Mirrored by relay.stores.local_buckets.
#
# KEYS: the sending relay's charge mark, then the buckets of every call, call
# after call. ARGV: the refill period, the batch's deadline (µs on Redis's clock,
# see RedisBuckets), then one spec per call, "capacity,cost,mode" for each of its
# buckets joined by commas (one argument per call is much cheaper for redis-py to
# send than three per bucket).
# Calls are decided one after the other, each all-or-nothing, as if each ran
# alone; within a call every draw reads its bucket as it was before the call (so
# one call never draws twice on a bucket). A negative cost gives back, never past
# capacity (buckets.Draw). The reply: Redis's time in µs, then 0
# when the deadline has passed (nothing touched) or 1 and, per call: allowed,
# then (level, ms to full, ms to wait) per bucket.
# A charge (a debit nobody waits for) is numbered: its spec starts "n:", n its
# place among its relay's charges, which that relay sends in order. The mark keeps
# the highest number taken, so a charge sent again (its batch's reply was lost) is
# taken once: its levels are read, nothing is charged. The mark lives a day, as
# long as the deepest debt takes to refill.
SCRIPT = """
local clock = redis.call('TIME')
local micros = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if micros >= tonumber(ARGV[2]) then
  return {micros, 0}
end
local now = math.floor(micros / 1000)
local period = tonumber(ARGV[1])
local reply = {micros, 1}
local taken, newest = nil, 0
local k = 1
for c = 3, #ARGV do
  local spec, again = ARGV[c], false
  local charge, draws = string.match(spec, '^(%d+):(.*)$')
  if charge then
    charge, spec = tonumber(charge), draws
    if taken == nil then taken = tonumber(redis.call('GET', KEYS[1]) or '0') end
    again = charge <= taken
    if not again then newest = math.max(newest, charge) end
  end
  local caps, costs, modes = {}, {}, {}
  local n = 0
  for cap, cost, mode in string.gmatch(spec, '(-?%d+),(-?%d+),(%d)') do
    n = n + 1
    caps[n], costs[n], modes[n] = tonumber(cap), tonumber(cost), tonumber(mode)
  end
  local levels, waits = {}, {}
  local allowed = 1
  for i = 1, n do
    local capacity, cost, mode = caps[i], costs[i], modes[i]
    local level = capacity
    local state = redis.call('HMGET', KEYS[k + i], 'l', 't')
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
  reply[#reply + 1] = allowed
  for i = 1, n do
    local capacity, cost = caps[i], costs[i]
    local level = levels[i]
    if allowed == 1 and cost ~= 0 and not again then
      level = math.max(-capacity * MAX_DEBT_PERIODS, math.min(capacity, level - cost))
      local ttl = period
      if capacity > 0 then
        ttl = math.ceil((capacity - level) * period / capacity) + 1000
      end
      redis.call('HSET', KEYS[k + i], 'l', level, 't', now)
      redis.call('PEXPIRE', KEYS[k + i], ttl)
    end
    local reset = 0
    if capacity > 0 and level < capacity then
      reset = math.ceil((capacity - level) * period / capacity)
    end
    reply[#reply + 1] = math.floor(level)
    reply[#reply + 1] = reset
    reply[#reply + 1] = waits[i]
  end
  k = k + n
end
if newest > 0 then
  redis.call('SET', KEYS[1], newest, 'PX', MARK_TTL)
end
return reply
"""
SCRIPT = SCRIPT.replace("MAX_DEBT_PERIODS", str(MAX_DEBT_PERIODS))
SCRIPT = SCRIPT.replace("MARK_TTL", str(MAX_DEBT_PERIODS * REFILL_MS))
PERIOD = str(REFILL_MS).encode()  # ARGV[1]


def encode(draws: Sequence[Draw], charge: int = 0) -> list[bytes]:
    """A call as the script reads it: each bucket's key, then one spec for them all;
    a charge's (`charge`, its number, from 1) taken once however often it is sent."""
    spec = ",".join(f"{draw.capacity},{draw.cost},{int(draw.mode)}" for draw in draws)
    if charge:
        spec = f"{charge}:{spec}"
    return [*(draw.key.encode() for draw in draws), spec.encode()]


def decode(reply: Sequence[Any], sizes: Sequence[int]) -> list[Outcome]:
    """The outcomes in a reply (after its time and deadline flag) to calls of `sizes`
    buckets each."""
    expected = sum(1 + 3 * size for size in sizes)
    if len(reply) != expected:
        raise ValueError(f"unexpected rate-limit script reply of {len(reply)} items")
    outcomes, at = [], 0
    for size in sizes:
        levels = tuple(
            Level(int(reply[i]), int(reply[i + 1]), int(reply[i + 2]))
            for i in range(at + 1, at + 1 + 3 * size, 3)
        )
        outcomes.append(Outcome(bool(reply[at]), levels))
        at += 1 + 3 * size
    return outcomes
