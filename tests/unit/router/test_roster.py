"""The network's roster, without a socket: every node once, each with the router that holds its connection and
its load as this router knows it (its own count for a node connected here; for another router's node, this
router's reservations plus what the holder last reported for everyone else)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivemesh.identity import Identity
from hivemesh.protocol import wire
from hivemesh.router.hub import MinerHub
from hivemesh.router.links import MemoryLink, RelayLink
from hivemesh.router.roster import roster
from hivemesh.store.db import Store

B = "0x" + "b" * 40  # another router of the cluster
MODEL = wire.ModelCard(id="m", engine="instant", context_length=2048)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[MinerHub]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'router.db'}")
    hub = MinerHub(Identity.generate(), store)
    try:
        yield hub
    finally:
        await hub.close()
        await store.close()


async def _connect(hub: MinerHub, node: str, capacity: int = 2) -> MemoryLink:
    link = MemoryLink(
        node=node,
        nonce="n-" + node,
        models=frozenset({"m"}),
        cards=(MODEL,),
        capacity=capacity,
        pool=0,
        signer=hub.identity,
        deliver=lambda _: None,
    )
    await hub.attach(link)
    return link


def _held_by_b(hub: MinerHub, node: str, *, capacity: int = 4, elsewhere: int = 0) -> RelayLink:
    async def forward(holder: str, node: str, msg: wire._Msg) -> bool:
        return True

    link = RelayLink(
        node=node,
        nonce="r-" + node,
        models=frozenset({"m"}),
        cards=(MODEL,),
        capacity=capacity,
        pool=0,
        holder=B,
        forward=forward,
        elsewhere=elsewhere,
    )
    hub.add_remote(link)
    return link


async def test_every_node_once_with_the_router_that_holds_it(hub: MinerHub) -> None:
    me = hub.identity.address
    await _connect(hub, "0xlocal")
    _held_by_b(hub, "0xremote")
    _held_by_b(hub, "0xboth")  # for a moment held by both routers (before the tie-break): the pool uses ours
    await _connect(hub, "0xboth")

    placed = roster(hub, me)
    assert sorted(p.link.node for p in placed) == ["0xboth", "0xlocal", "0xremote"]
    assert {p.link.node: (p.router, p.local) for p in placed} == {
        "0xlocal": (me, True),
        "0xboth": (me, True),
        "0xremote": (B, False),
    }


async def test_load_is_the_whole_networks_as_known_here(hub: MinerHub) -> None:
    local = await _connect(hub, "0xlocal", capacity=3)
    _held_by_b(hub, "0xremote", capacity=4, elsewhere=2)  # B last said: 2 tasks for other routers
    assert hub.reserve("0xlocal") is local and hub.reserve("0xremote") is not None  # one of ours on each

    load = {p.link.node: (p.inflight, p.link.capacity) for p in roster(hub, hub.identity.address)}
    assert load == {"0xlocal": (1, 3), "0xremote": (3, 4)}


async def test_a_router_on_its_own_lists_exactly_its_connections(hub: MinerHub) -> None:
    for node in ("0xa", "0xb"):
        await _connect(hub, node)
    placed = roster(hub, hub.identity.address)
    assert [p.link for p in placed] == list(hub.links.values())
    assert {p.router for p in placed} == {hub.identity.address}
