"""A miner that joins while tasks wait gets its Welcome before any Assign.

The hub makes a node schedulable only after its Welcome went out (``MinerHub.attach``). In the other order, a task
waiting in the queue was assigned to the node during the store write that preceded the Welcome, the miner (which
waits for its Welcome first) gave up on the connection, and a reconnecting miner met the same race every time for
as long as the load lasted (seen after a router restart under load)."""

from __future__ import annotations

import threading

import httpx

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import InstantEngine
from hivemesh.protocol import wire

from ..conftest import API_KEY, Network, until
from .test_hostile_miners import add_rogue


def _ask(net: Network, out: dict[str, httpx.Response], name: str, max_tokens: int) -> threading.Thread:
    def call() -> None:
        out[name] = httpx.post(
            f"{net.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {API_KEY}"},
            json={
                "model": "instant-echo",
                "messages": [{"role": "user", "content": name}],
                "max_tokens": max_tokens,
            },
            timeout=60,
        )

    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t


def test_a_miner_joining_while_a_task_waits_is_welcomed_before_it_is_assigned(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="exact"))
    network.add_miner("slow", engine_obj=InstantEngine(capacity=1, token_delay_s=0.2), capacity=1)
    out: dict[str, httpx.Response] = {}
    first = _ask(network, out, "first", 8)  # holds the only slot for 1.6 s
    until(
        lambda: (
            network.service.scheduler.hub.links
            and all(link.inflight for link in network.service.hub.links.values())
        )
    )
    second = _ask(network, out, "second", 2)
    until(lambda: network.service.scheduler.depth == 1)  # it waits for a free miner
    rogue = add_rogue(network, "honest")  # joins now: the waiting task is assigned to it at once
    kinds = [type(wire.decode_to_miner(f)).__name__ for f in rogue.frames]
    assert kinds[:2] == ["Challenge", "Welcome"]
    second.join(30)
    assert out["second"].status_code == 200, out["second"].text
    assert out["second"].json()["hivemesh"]["miners"] == [rogue.address]  # it was the waiting task's miner
    assert rogue.connections == 1 and not rogue.closes  # welcomed once, never dropped
    first.join(30)
    assert out["first"].status_code == 200
