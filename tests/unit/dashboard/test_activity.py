"""The overview's live rates: finished tasks per minute, tokens per second, verified share over the last hour."""

from __future__ import annotations

from types import SimpleNamespace

from hivemesh.dashboard.activity import Activity


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(verdict: str | None, tokens: int = 0) -> SimpleNamespace:
    """A finished task as a router observer sees it (``final`` is None for a failed task)."""
    usage = SimpleNamespace(completion_tokens=tokens)
    return SimpleNamespace(final=None if verdict is None else SimpleNamespace(verdict=verdict, usage=usage))


def test_empty() -> None:
    s = Activity(clock=Clock()).summary(minutes=5)
    assert s["tasks_per_min"] == 0 and s["tokens_per_s"] == 0 and s["verified_share"] is None
    assert s["per_minute"] == [0] * 5


def test_rates_and_share_follow_the_window() -> None:
    clock = Clock()
    a = Activity(clock=clock)
    a.observe(run("verified", 60))
    a.observe(run("disputed", 30))
    clock.now += 120  # two minutes later
    a.observe(run("verified", 60))
    a.observe(run(None))
    s = a.summary(minutes=3)
    assert s["tasks_per_min"] == 2 and s["tokens_last_min"] == 60 and s["tokens_per_s"] == 1.0
    assert s["last_hour"] == {"verified": 2, "disputed": 1, "unverified": 0, "failed": 1, "finished": 4}
    assert s["verified_share"] == 0.5
    assert s["per_minute"] == [2, 0, 2]  # oldest first

    clock.now += 3600  # everything ages out of the hour
    s = a.summary()
    assert s["last_hour"]["finished"] == 0 and s["verified_share"] is None and sum(s["per_minute"]) == 0
