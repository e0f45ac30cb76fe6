"""Live network rates for the overview: finished tasks, their verdicts and tokens, per second over the last hour.

Fed by the router's task observers (one call per ended or failed task), so the overview's rates cost nothing at
read time and no table scan. The counts start when the router starts; history lives in the task table.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VERDICTS = ("verified", "disputed", "unverified", "failed")


@dataclass(slots=True)
class _Second:
    at: int  # unix second
    tasks: int = 0
    verified: int = 0
    disputed: int = 0
    unverified: int = 0
    failed: int = 0
    tokens: int = 0  # completion tokens served


class Activity:
    def __init__(self, *, horizon_s: int = 3600, clock: Callable[[], float] = time.time) -> None:
        self.horizon_s = horizon_s
        self.clock = clock
        self._seconds: deque[_Second] = deque()

    def observe(self, run: Any) -> None:
        """A router task observer: ``run.final`` (an Outcome) when the task ended, else it failed."""
        final = getattr(run, "final", None)
        if final is None:
            self.record("failed", 0)
        else:
            self.record(str(final.verdict), int(final.usage.completion_tokens))

    def record(self, verdict: str, tokens: int) -> None:
        now = int(self.clock())
        if not self._seconds or self._seconds[-1].at != now:
            self._seconds.append(_Second(now))
            self._prune(now)
        sec = self._seconds[-1]
        sec.tasks += 1
        sec.tokens += tokens
        if verdict in VERDICTS:
            setattr(sec, verdict, getattr(sec, verdict) + 1)

    def _prune(self, now: int) -> None:
        while self._seconds and self._seconds[0].at <= now - self.horizon_s:
            self._seconds.popleft()

    def summary(self, *, minutes: int = 30) -> dict[str, Any]:
        """Tasks and tokens over the last minute, verdicts over the last hour, tasks per minute (oldest first)."""
        now = int(self.clock())
        self._prune(now)
        minute = [s for s in self._seconds if s.at > now - 60]
        hour = {v: sum(getattr(s, v) for s in self._seconds) for v in VERDICTS}
        finished = sum(hour.values())
        series = [0] * minutes
        for s in self._seconds:
            ago = (now - s.at) // 60
            if ago < minutes:
                series[minutes - 1 - ago] += s.tasks
        tokens = sum(s.tokens for s in minute)
        return {
            "tasks_per_min": sum(s.tasks for s in minute),
            "tokens_per_s": round(tokens / 60, 2),
            "tokens_last_min": tokens,
            "verified_share": round(hour["verified"] / finished, 4) if finished else None,
            "last_hour": hour | {"finished": finished},
            "per_minute": series,
        }
