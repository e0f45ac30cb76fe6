"""``SharedLimiter``: one GCRA per key in Redis for every router, the same verdicts and headers as the local
limiter, and a router that loses the broker limits on its own instead of refusing traffic."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from hivemesh.cluster.broker import Broker
from hivemesh.errors import RateLimited
from hivemesh.router.limits import LocalLimiter, SharedLimiter


async def test_two_routers_share_one_token_bucket(redis_url: str) -> None:
    brokers = [await Broker.connect(redis_url), await Broker.connect(redis_url)]
    a, b = (SharedLimiter(br) for br in brokers)
    local = LocalLimiter()
    try:
        first, same = await a.take("k1", None, 100, 40), await local.take("k1", None, 100, 40)
        assert (
            (first.limit_tokens, first.remaining_tokens)
            == (same.limit_tokens, same.remaining_tokens)
            == (100, 60)
        )
        assert first.reset_tokens == pytest.approx(same.reset_tokens, abs=0.5)  # 24 s: 40 tokens at 100/min
        second = await b.take("k1", None, 100, 40)
        assert (second.limit_tokens, second.remaining_tokens) == (100, 20)
        with pytest.raises(RateLimited, match=r"tokens per min \(TPM\): limit 100") as ei:
            await a.take("k1", None, 100, 40)
        assert ei.value.headers["x-ratelimit-remaining-tokens"] == "20"
        assert 0 < float(ei.value.headers.get("retry-after", "1")) <= 60
        with pytest.raises(RateLimited, match="Request too large"):
            await b.take("k1", None, 100, 101)
        assert (await b.take("other", 3, None, 0)).remaining_requests == 2  # keys are apart
    finally:
        for br in brokers:
            await br.close()


async def test_without_the_broker_a_router_limits_on_its_own(redis_url: str) -> None:
    broker = await Broker.connect(redis_url)
    limiter = SharedLimiter(broker)
    await broker.redis.aclose()
    broker.redis = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    limiter._script = broker.redis.register_script("return 0")  # any call now fails to connect
    try:
        assert (await limiter.take("k", 2, None, 0)).remaining_requests == 1
        assert (await limiter.take("k", 2, None, 0)).remaining_requests == 0
        with pytest.raises(RateLimited):
            await limiter.take("k", 2, None, 0)
    finally:
        await broker.close()
