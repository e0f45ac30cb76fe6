"""Per-key rate limits: requests per minute and tokens per minute, in process, no database.

Each limit is a GCRA (generic cell rate algorithm: a leaky bucket kept as one "theoretical arrival time"
per key). A key may burst up to its whole per-minute limit, then refills continuously. ``check`` is plain
synchronous code, so under asyncio nothing can run between the test and the update: two concurrent requests
can never both take the last slot. Both limits are tested before either is charged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hivemesh.errors import RateLimited

PERIOD = 60.0  # seconds: limits are per minute
_EPS = 1e-9


def duration(seconds: float) -> str:
    """OpenAI's reset header format: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    ms = math.ceil(max(0.0, seconds) * 1000 - _EPS)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    m, s = divmod(math.ceil(ms / 1000), 60)
    return f"{m}m{s}s"


@dataclass(frozen=True)
class LimitState:
    """The key's limits after this request, for the ``x-ratelimit-*`` response headers."""

    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float  # seconds until the request bucket is full again
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = duration(self.reset_requests)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = duration(self.reset_tokens)
        return out


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    tat: float  # the new theoretical arrival time, if ok
    wait: float  # seconds until the request would fit, if not ok
    remaining: int | None
    reset: float


def _gcra(tat: float, now: float, cost: int, limit: int | None) -> _Verdict:
    if limit is None:
        return _Verdict(True, tat, 0.0, None, 0.0)
    interval = PERIOD / limit
    base = max(tat, now)
    new_tat = base + cost * interval
    earliest = new_tat - PERIOD
    if earliest > now + _EPS:
        remaining = max(0, math.floor((PERIOD - (base - now)) / interval + _EPS))
        return _Verdict(False, tat, earliest - now, remaining, base - now)
    remaining = max(0, math.floor((PERIOD - (new_tat - now)) / interval + _EPS))
    return _Verdict(True, new_tat, 0.0, remaining, new_tat - now)


class RateLimiter:
    """Request and token limits per API key. ``now`` is a monotonic clock reading in seconds."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._tat: dict[str, tuple[float, float]] = {}  # key_id -> (requests TAT, tokens TAT)
        self._max_keys = max_keys

    def check(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, now: float) -> LimitState:
        """Count one request of ``tokens`` tokens, or raise ``RateLimited`` (nothing counted) with retry_after."""
        if tokens < 0 or (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
            raise ValueError(f"tokens must be >= 0 and limits > 0 or None, got {tokens=} {rpm=} {tpm=}")
        if tpm is not None and tokens > tpm:
            raise RateLimited(
                f"Request too large for key {key_id}: tokens per min (TPM) limit {tpm}, requested {tokens}. "
                f"Reduce the prompt or max_tokens.",
                retry_after=PERIOD,
            )
        req_tat, tok_tat = self._tat.get(key_id, (now, now))
        req = _gcra(req_tat, now, 1, rpm)
        tok = _gcra(tok_tat, now, tokens, tpm)
        state = LimitState(rpm, req.remaining, req.reset, tpm, tok.remaining, tok.reset)
        if not (req.ok and tok.ok):
            wait = max(req.wait, tok.wait)
            which = "requests per min (RPM)" if not req.ok else "tokens per min (TPM)"
            limit = rpm if not req.ok else tpm
            raise RateLimited(
                f"Rate limit reached for key {key_id} on {which}: limit {limit}. Please try again in {duration(wait)}.",
                retry_after=wait,
                headers=state.headers(),
            )
        if len(self._tat) >= self._max_keys and key_id not in self._tat:
            self._prune(now)
        self._tat[key_id] = (req.tat, tok.tat)
        return state

    def adjust_tokens(self, key_id: str, tpm: int | None, delta: int, now: float) -> None:
        """Correct the token count once the real usage is known (``delta`` = actual - estimated)."""
        if tpm is None or key_id not in self._tat:
            return
        req_tat, tok_tat = self._tat[key_id]
        self._tat[key_id] = (req_tat, max(now, max(tok_tat, now) + delta * PERIOD / tpm))

    def _prune(self, now: float) -> None:
        """Forget keys whose buckets are full again: they behave exactly like unseen keys."""
        for key in [k for k, (r, t) in self._tat.items() if r <= now and t <= now]:
            del self._tat[key]
