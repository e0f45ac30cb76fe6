"""Rate limits per key: requests and tokens per minute (GCRA), headers in OpenAI's format."""

from __future__ import annotations

import asyncio

import pytest

from hivemesh.errors import RateLimited
from hivemesh.ledger import RateLimiter
from hivemesh.ledger.limits import duration


def test_a_key_may_burst_its_rpm_then_gets_429_with_retry_after() -> None:
    limiter = RateLimiter()
    for i in range(6):
        state = limiter.check("k", rpm=6, tpm=None, tokens=10, now=100.0)
        assert state.remaining_requests == 5 - i
    with pytest.raises(RateLimited) as e:
        limiter.check("k", rpm=6, tpm=None, tokens=10, now=100.0)
    assert e.value.status == 429
    assert e.value.retry_after == pytest.approx(10.0)  # one slot refills every 60/6 s
    assert e.value.headers["retry-after"] == "10"
    assert e.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert "requests per min (RPM)" in e.value.message
    assert limiter.check("k", rpm=6, tpm=None, tokens=10, now=110.0).remaining_requests == 0
    assert limiter.check("other", rpm=6, tpm=None, tokens=10, now=110.0).remaining_requests == 5


def test_headers() -> None:
    limiter = RateLimiter()
    state = limiter.check("k", rpm=60, tpm=1000, tokens=250, now=0.0)
    assert state.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "15s",
    }
    assert RateLimiter().check("k", None, None, 5, 0.0).headers() == {}


def test_tokens_are_limited_and_a_refused_request_counts_nothing() -> None:
    limiter = RateLimiter()
    limiter.check("k", rpm=100, tpm=1000, tokens=900, now=0.0)
    with pytest.raises(RateLimited, match="tokens per min") as e:
        limiter.check("k", rpm=100, tpm=1000, tokens=200, now=0.0)
    assert e.value.retry_after == pytest.approx(6.0)  # 100 tokens refill in 6 s
    state = limiter.check("k", rpm=100, tpm=1000, tokens=100, now=0.0)
    assert state.remaining_requests == 98  # the refused request did not use a request slot
    assert state.remaining_tokens == 0


def test_a_request_larger_than_the_tpm_can_never_pass() -> None:
    with pytest.raises(RateLimited, match="Request too large"):
        RateLimiter().check("k", rpm=None, tpm=100, tokens=101, now=0.0)


def test_adjusting_tokens_after_the_fact() -> None:
    limiter = RateLimiter()
    limiter.check("k", rpm=None, tpm=1000, tokens=1000, now=0.0)  # estimated with max_tokens
    limiter.adjust_tokens("k", tpm=1000, delta=-600, now=0.0)  # only 400 were used
    assert limiter.check("k", rpm=None, tpm=1000, tokens=600, now=0.0).remaining_tokens == 0


async def test_concurrent_requests_never_exceed_the_limit() -> None:
    limiter = RateLimiter()

    async def one() -> bool:
        await asyncio.sleep(0)
        try:
            limiter.check("k", rpm=10, tpm=None, tokens=1, now=5.0)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(results) == 10


def test_idle_keys_are_forgotten_when_the_table_is_full() -> None:
    limiter = RateLimiter(max_keys=10)
    for i in range(10):
        limiter.check(f"k{i}", rpm=60, tpm=None, tokens=1, now=0.0)
    limiter.check("new", rpm=60, tpm=None, tokens=1, now=120.0)
    assert len(limiter._tat) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0ms"), (0.0201, "21ms"), (1, "1s"), (1.5, "1.5s"), (59.9991, "1m0s"), (360, "6m0s")],
)
def test_duration_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text
