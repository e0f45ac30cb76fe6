"""One connection per node: the tie-break between two routers holding a link to one node, without a socket.

Both routers read the same presence entry (Redis's, after both wrote) and apply ``holder_instead``: exactly one
keeps its link, the other closes its own (``MinerHub.hand_over``) and its tasks on it hear a disconnect, as on any
dropped connection; the winner's tasks hear nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivemesh.config import MinerConfig
from hivemesh.engines.instant import InstantEngine
from hivemesh.identity import Identity
from hivemesh.miner.agent import MinerAgent
from hivemesh.protocol import wire
from hivemesh.router.hub import MinerHub
from hivemesh.router.presence import holder_instead, refusal
from hivemesh.store.db import Store

from .memory import Pipe, join

A, B, C = "0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40


def test_the_entry_names_the_one_router_that_keeps_the_node() -> None:
    live = {A, B}.__contains__
    assert holder_instead(A, {"router": B, "nonce": "n"}, live) == B  # another live router: yield to it
    assert holder_instead(B, {"router": B, "nonce": "n"}, live) is None  # ours: keep
    assert holder_instead(A, {"router": C, "nonce": "n"}, live) is None  # a dead router's: claim it
    assert holder_instead(A, None, live) is None  # none (a broker restart): claim it
    assert holder_instead(A, {"nonce": "n"}, live) is None  # not an entry anyone wrote: claim over it


@pytest.mark.parametrize("last", [A, B])
def test_after_both_write_exactly_one_of_two_routers_yields(last: str) -> None:
    entry = {"router": last, "nonce": f"nonce-{last}"}  # the entry Redis holds once both writes landed
    yielded = {me: holder_instead(me, entry, lambda _: True) for me in (A, B)}
    assert [me for me, holder in yielded.items() if holder is None] == [last]
    assert [holder for holder in yielded.values() if holder is not None] == [last]


def test_the_refusal_names_node_and_holder_and_fits_a_close_frame() -> None:
    node = Identity.generate().address
    why = refusal(node, A)
    assert why.startswith(f"node {node[:10]}") and A in why and why.endswith("one connection per node")
    assert len(why.encode()) <= 123  # a WebSocket close reason's limit


class Sink:
    """A task run in flight on the node, as the hub sees it: counts what it hears."""

    def __init__(self) -> None:
        self.disconnects: list[str] = []

    def on_message(self, node: str, msg: wire.FromMiner) -> None:
        pass

    def on_disconnect(self, node: str) -> None:
        self.disconnects.append(node)


@pytest.fixture
async def hubs(tmp_path: Path) -> AsyncIterator[tuple[MinerHub, MinerHub]]:
    stores = [await Store.open(f"sqlite+aiosqlite:///{tmp_path / f'{n}.db'}") for n in "ab"]
    hubs = MinerHub(Identity.generate(), stores[0]), MinerHub(Identity.generate(), stores[1])
    try:
        yield hubs
    finally:
        for hub, store in zip(hubs, stores, strict=True):
            await hub.close()
            await store.close()


@pytest.mark.parametrize("winner", [0, 1])
async def test_the_loser_closes_its_link_and_its_task_fails_over(
    hubs: tuple[MinerHub, MinerHub], tmp_path: Path, winner: int
) -> None:
    identity = Identity.generate()  # one node, connected to both routers at once (the race)
    pipes: list[Pipe] = []
    for hub in hubs:
        cfg = MinerConfig(router_url="memory://", data_dir=tmp_path, engine="instant")
        pipes.append(await join(hub, MinerAgent(cfg, identity, InstantEngine())))
    node = identity.address
    sinks = [Sink(), Sink()]
    for hub, sink in zip(hubs, sinks, strict=True):
        hub.runs["task-on-" + hub.identity.address] = sink
        assert hub.reserve(node) is not None  # a task in flight on each router's link: double-booked
    routers = [hub.identity.address for hub in hubs]
    entry = {"router": routers[winner], "nonce": "whatever the winner's connection answered"}

    for hub in hubs:  # each router, on seeing the entry, applies the same rule
        if (holder := holder_instead(hub.identity.address, entry, lambda _: True)) is not None:
            await hub.hand_over(hub.links[node], holder)

    loser = 1 - winner
    assert node in hubs[winner].links and node not in hubs[loser].links
    assert pipes[loser].link is not None and pipes[loser].link.closed
    assert sinks[loser].disconnects == [node]  # its task fails over as on a dropped connection
    assert sinks[winner].disconnects == []
    assert hubs[winner].links[node].inflight == 1  # the node's load is now counted by its one holder
    for pipe in pipes:
        await asyncio.wait_for(pipe.cut(), 5)
