"""One queue per session over two routers (one process, real sockets, one broker).

* A session's tasks that wait, whichever router they came through, wait in one FIFO on the router that owns the
  session's queue, and start in the order they arrived.
* When the owner goes, the other router takes the queue over and serves the tasks that waited there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from hivemesh.engines.instant import InstantEngine

from ...conftest import API_KEY, Network, until

MODEL = "instant-echo"
OTHER_KEY = "hm-test-key-other-0123456789"


def _start(a: Network, b: Network, db: Path, redis_url: str) -> None:
    url = f"sqlite+aiosqlite:///{db}"
    for net in (a, b):
        net.start_router(
            database_url=url,
            ledger_url=url,
            cluster_url=redis_url,
            extra_keys=(OTHER_KEY,),
            queue_timeout_s=20,
        )


def _ask(net: Network, key: str = API_KEY, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        f"{net.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
        timeout=60,
    )


class Calls:
    """Requests in threads; each one's response and the time it came back."""

    def __init__(self) -> None:
        self.done: dict[str, tuple[float, httpx.Response]] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, net: Network, key: str = API_KEY, max_tokens: int = 4) -> None:
        def call() -> None:
            r = _ask(net, key, max_tokens)
            self.done[name] = (time.monotonic(), r)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(90)


def _owned_and_full(owner: Network, holder: Network, other: Network, delay_s: float) -> Calls:
    """``owner`` owns the session's queue (a task went through it), and the one slot of the one slow miner
    ``holder`` holds (``other`` sees it through the relay) is taken by another session's long task (``busy``):
    every task of the session waits from here on."""
    holder.add_miner("slow", engine_obj=InstantEngine(capacity=1, token_delay_s=delay_s), capacity=1)
    until(lambda: len(other.service.hub.remote) == 1)
    assert _ask(owner, max_tokens=1).status_code == 200
    calls = Calls()
    calls.start("busy", holder, key=OTHER_KEY, max_tokens=8)
    until(lambda: any(link.inflight for link in holder.service.hub.links.values()))
    return calls


def test_a_sessions_tasks_wait_in_one_fifo_whichever_router_they_came_through(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str
) -> None:
    a, b = two
    _start(a, b, tmp_path / "shared.db", redis_url)
    calls = _owned_and_full(a, a, b, 0.2)
    until(lambda: any(link.elsewhere for link in b.service.hub.remote.values()))  # b sees the slot taken
    for name, net in (("2", b), ("3", a), ("4", b), ("5", a)):
        calls.start(name, net)
        time.sleep(0.1)
    # the four waiting tasks are in one queue, on a: b's two only hold places there
    queues = a.service.scheduler.queues
    until(lambda: sum(len(q) for q in queues.values()) == 4, timeout=5)
    assert len(queues) == 1  # the long task's session queues nothing
    (queue,) = queues.values()
    origins = [t.origin for t in queue]
    me_b = b.service.identity.address
    assert origins == [me_b, None, me_b, None]
    assert b.service.scheduler.depth == 0
    assert b.service.session_queues is not None and len(b.service.session_queues.waiting) == 2
    calls.join()
    assert all(r.status_code == 200 for _, r in calls.done.values()), {
        n: r.text for n, (_, r) in calls.done.items()
    }
    order = sorted(calls.done, key=lambda n: calls.done[n][0])
    assert order == ["busy", "2", "3", "4", "5"]
    # nothing is left behind: no place, no grant, no waiting ticket on either router
    for net in (a, b):
        sq = net.service.session_queues
        assert sq is not None
        until(lambda sq=sq: not sq.waiting and not sq.granted and not sq.places, timeout=5)  # type: ignore[misc]


def test_the_queue_moves_when_its_owner_goes(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str
) -> None:
    a, b = two
    _start(a, b, tmp_path / "shared.db", redis_url)
    calls = _owned_and_full(a, b, a, 0.3)  # a owns the queue; the one slot is b's miner's
    calls.start("2", b)
    time.sleep(0.15)
    calls.start("3", b)
    sq = b.service.session_queues
    assert sq is not None
    until(lambda: len(sq.waiting) == 2, timeout=5)
    assert {w.owner for w in sq.waiting.values()} == {a.service.identity.address}
    a.stop_router()  # the owner goes: b takes the queue over and serves what waited there
    calls.join()
    assert {n: r.status_code for n, (_, r) in calls.done.items()} == {"busy": 200, "2": 200, "3": 200}
    assert calls.done["2"][0] < calls.done["3"][0]
    assert not sq.waiting


def test_the_places_of_a_router_that_goes_are_dropped(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str
) -> None:
    a, b = two
    _start(a, b, tmp_path / "shared.db", redis_url)
    calls = _owned_and_full(a, a, b, 0.3)
    calls.start("2", b)
    calls.start("3", b)
    sq = a.service.session_queues
    assert sq is not None
    until(lambda: len(sq.places) == 2, timeout=5)
    # b dies without a word (its farewells are lost): its callers are gone, their places must not hold a's queue
    assert b.service.cluster is not None
    b.service.cluster.relay.post = lambda router, payload: None  # type: ignore[method-assign]
    b.stop_router()
    until(lambda: not sq.places and a.service.scheduler.depth == 0, timeout=4)
    calls.join()
    assert calls.done["busy"][1].status_code == 200


def test_with_the_broker_gone_a_router_queues_on_its_own(
    two: tuple[Network, Network], tmp_path: Path
) -> None:
    """The session queues fail open, as presence and the shared limits do: no broker, no 5xx."""
    from hivemesh.cluster import RedisServer

    a, b = two
    with RedisServer.running() as redis:
        _start(a, b, tmp_path / "shared.db", redis.url)
        a.add_miner("m")
        until(lambda: len(b.service.hub.remote) == 1)
        assert _ask(b).status_code == 200  # b owns the session's queue, for a while
        redis.stop()
        r = _ask(a)  # a does not own it and cannot ask who does: it queues the task itself
        assert r.status_code == 200, r.text


def test_a_task_waiting_at_another_routers_queue_is_queued_here_when_the_broker_goes(
    two: tuple[Network, Network], tmp_path: Path
) -> None:
    from hivemesh.cluster import RedisServer

    a, b = two
    with RedisServer.running() as redis:
        _start(a, b, tmp_path / "shared.db", redis.url)
        calls = _owned_and_full(b, a, b, 0.3)  # b owns the queue; the one slot is a's miner's
        calls.start("2", a)
        sq = a.service.session_queues
        assert sq is not None
        until(lambda: len(sq.waiting) == 1, timeout=5)  # its place is in b's queue
        redis.stop()  # no grant can come now: a queues the task itself and serves it when its miner is free
        calls.join()
    assert {n: r.status_code for n, (_, r) in calls.done.items()} == {"busy": 200, "2": 200}
    assert not sq.waiting
