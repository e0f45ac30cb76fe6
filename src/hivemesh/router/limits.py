"""Per-key rate limits (requests and tokens per minute) behind one small interface, local or network-wide.

* ``LocalLimiter``: this router's memory (``ledger.limits.RateLimiter``, GCRA). A router on its own needs nothing
  else.
* ``SharedLimiter``: one counter per key for the whole cluster, in the broker (Redis). The same GCRA runs as a Lua
  script, atomically in Redis, on Redis's clock, so an rpm=4 key gets 4 requests a minute through any number of
  routers, not 4 per router. The key's two theoretical arrival times live in one hash that expires once both
  buckets are full again. If the broker cannot be reached the router falls back to its local limiter (the limit
  then holds per router) and says so in its log: a broker outage does not stop paid traffic.

Both answer ``take(key_id, rpm, tpm, tokens)`` with the ``LimitState`` for the ``x-ratelimit-*`` headers, or raise
``RateLimited`` with retry-after, counting nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from redis.exceptions import RedisError

from hivemesh.cluster.broker import Broker
from hivemesh.errors import RateLimited
from hivemesh.ledger.limits import PERIOD, LimitState, RateLimiter, duration

log = logging.getLogger(__name__)


class Limiter(Protocol):
    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> LimitState: ...


class LocalLimiter:
    def __init__(self, inner: RateLimiter | None = None) -> None:
        self.inner = inner or RateLimiter()

    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> LimitState:
        return self.inner.check(key_id, rpm, tpm, tokens, time.monotonic())


# ledger.limits._gcra, in Lua. KEYS[1]: the key's hash {r: requests TAT, t: tokens TAT} (server seconds).
# ARGV: rpm, tpm (0: no limit), tokens, period. Returns strings (Lua numbers would be truncated to integers):
# req ok, tok ok, then for each limit: wait, remaining (-1: no limit), reset.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, period = tonumber(ARGV[3]), tonumber(ARGV[4])
local eps = 1e-9
local function gcra(tat, c, limit)
  if limit == 0 then return {1, tat, 0, -1, 0} end
  local interval = period / limit
  local base = math.max(tat, now)
  local new_tat = base + c * interval
  local earliest = new_tat - period
  if earliest > now + eps then
    return {0, tat, earliest - now, math.max(0, math.floor((period - (base - now)) / interval + eps)), base - now}
  end
  return {1, new_tat, 0, math.max(0, math.floor((period - (new_tat - now)) / interval + eps)), new_tat - now}
end
local cur = redis.call('HMGET', KEYS[1], 'r', 't')
local req = gcra(tonumber(cur[1]) or now, 1, rpm)
local tok = gcra(tonumber(cur[2]) or now, cost, tpm)
if req[1] == 1 and tok[1] == 1 then
  redis.call('HSET', KEYS[1], 'r', string.format('%.6f', req[2]), 't', string.format('%.6f', tok[2]))
  local ttl = math.max(req[2], tok[2]) - now
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1000)
end
local function s(x) return string.format('%.6f', x) end
return {tostring(req[1]), tostring(tok[1]), s(req[3]), tostring(req[4]), s(req[5]), s(tok[3]), tostring(tok[4]), s(tok[5])}
"""


class SharedLimiter:
    def __init__(self, broker: Broker, fallback: LocalLimiter | None = None) -> None:
        self.broker = broker
        self.fallback = fallback or LocalLimiter()
        self._script = broker.redis.register_script(_GCRA)
        self._degraded = False

    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> LimitState:
        if tokens < 0 or (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
            raise ValueError(f"tokens must be >= 0 and limits > 0 or None, got {tokens=} {rpm=} {tpm=}")
        if tpm is not None and tokens > tpm:
            raise RateLimited(
                f"Request too large for key {key_id}: tokens per min (TPM) limit {tpm}, requested {tokens}. "
                f"Reduce the prompt or max_tokens.",
                retry_after=PERIOD,
            )
        try:
            out = await self._script(
                keys=[self.broker.key("ratelimit", key_id)], args=[rpm or 0, tpm or 0, tokens, PERIOD]
            )
        except (RedisError, OSError) as exc:
            if not self._degraded:
                log.warning("shared rate limits unavailable, limiting per router error=%s", str(exc)[:200])
                self._degraded = True
            return await self.fallback.take(key_id, rpm, tpm, tokens)
        if self._degraded:
            log.info("shared rate limits back")
            self._degraded = False
        req_ok, tok_ok, req_wait, req_left, req_reset, tok_wait, tok_left, tok_reset = (float(x) for x in out)
        state = LimitState(
            rpm,
            None if rpm is None else int(req_left),
            req_reset,
            tpm,
            None if tpm is None else int(tok_left),
            tok_reset,
        )
        if not (req_ok and tok_ok):
            wait = max(req_wait, tok_wait)
            which = "requests per min (RPM)" if not req_ok else "tokens per min (TPM)"
            limit = rpm if not req_ok else tpm
            raise RateLimited(
                f"Rate limit reached for key {key_id} on {which}: limit {limit}. Please try again in {duration(wait)}.",
                retry_after=wait,
                headers=state.headers(),
            )
        return state
