"""Every node of the network once, as this router knows it: what the network-wide views read.

A router of a cluster schedules on every router's nodes (``MinerHub.members``), so what it shows must cover them
too: a dashboard or a scrape on one router that counted only its own connections would call half the network
offline. Nodes connected here are exact. Another router's nodes (``MinerHub.remote``, kept by ``router.cluster``
from presence) are as their holder last announced them: models, capacity, stake pool, record and validation from
its presence entry; load as this router's own reservations on the node plus what the holder last reported for
everyone else (``RelayLink.elsewhere``, republished every ``cluster.LOAD_S``); hardware, version and connection
time as the holder's presence entry carries them.

Everything here is read from memory, O(nodes), with no database read: a scrape or a listing at 10,000 nodes
costs what a pass over two dicts costs. On a router without a cluster the roster is exactly its connections.
"""

from __future__ import annotations

from dataclasses import dataclass

from hivemesh.router.hub import MinerHub
from hivemesh.router.links import Link, RelayLink


@dataclass(frozen=True, slots=True)
class Placed:
    """A node of the network and where it is connected."""

    link: Link
    router: str  # the router that holds its connection (``Cluster.me``: that router's identity address)
    inflight: int  # tasks it runs for the whole network, as known here

    @property
    def local(self) -> bool:
        """Whether this router holds the node's connection."""
        return self.link.local


def roster(hub: MinerHub, me: str) -> list[Placed]:
    """Every node in the network once: ``hub``'s own connections (held by ``me``), then the nodes other live
    routers hold. A node briefly held by two routers is listed once, as this router's (``MinerHub.members``)."""
    return [_placed(ln, me) for ln in hub.members()]


def _placed(link: Link, me: str) -> Placed:
    if isinstance(link, RelayLink):
        return Placed(link, link.holder, link.inflight + link.elsewhere)
    return Placed(link, me, link.inflight)
