"""How a task run talks to a miner: one small interface, three ways to carry it.

*Send to node*: ``await link.send(msg)`` (True if it went out; False means the node is gone). *Messages from
node*: whatever carries the link hands the miner's frames to the hub (``MinerHub.receive`` for a frame off a
connection this router holds, checked here; ``MinerHub.deliver`` for a message another router already checked),
and the hub routes them to the task they name. The link signs what it assigns (``Assign``, ``Verify``) as the
router that holds the node's connection, over that connection's challenge nonce: the only signature the miner
knows to check.

* ``MinerLink`` (``router.hub``): the node's WebSocket to this router.
* ``RelayLink``: a node connected to another router of the cluster; messages go through the broker to that
  router, which signs and sends them (``router.relay``). A node found with no free slot there after all (the
  views of another router's load are a moment behind) is answered with a ``TaskFailed`` of code ``wire.BUSY``: not the
  miner's doing; the task tries the node again later.
* ``MemoryLink``: in memory, for tests and the benchmark's swarm: messages go to a callback, and the "miner" answers
  through ``MinerHub.receive`` exactly as a socket would, so the scheduler and the task state machine run without
  a socket.

Every link carries what the node pool weighs and judges (capacity, load, record, stake pool, validation); setting
any of those tells the pool (``on_change``), whoever sets it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hivemesh.identity import Identity
from hivemesh.protocol import wire

_POOLED = frozenset({"inflight", "finished", "pool", "validated", "closed", "capacity", "elsewhere"})


@dataclass(eq=False, kw_only=True)
class Link:
    """A connected node as the router sees it, whatever carries its messages."""

    node: str
    nonce: str  # the challenge its connection answered: what its signatures (and ours to it) cover
    models: frozenset[str]
    cards: tuple[wire.ModelCard, ...]
    capacity: int
    pool: int
    hardware: wire.Hardware = field(default_factory=wire.Hardware)
    version: str = ""
    connected_at: float = field(default_factory=time.time)
    inflight: int = 0
    strikes: int = 0
    finished: int = 0  # tasks completed on this connection's node (for the new-node share)
    closed: bool = False
    validated: bool = False  # passed a validator's check since this connection's hello (see ``serving``)
    on_change: Callable[[Link], None] | None = field(default=None, repr=False)  # the node pool's update

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _POOLED and (cb := getattr(self, "on_change", None)) is not None:
            cb(self)  # whoever changes what the node pool weighs or judges (a validator's verdict too)

    @property
    def free(self) -> int:
        return self.capacity - self.inflight

    @property
    def local(self) -> bool:
        """Whether this router holds the node's connection (and so must keep its capacity honest)."""
        return True

    async def send(self, msg: wire._Msg) -> bool:
        """Send ``msg`` to the node; False when it cannot go (the node is gone: its receive side notices)."""
        if self.closed:
            return False
        return await self.transmit(msg)

    async def transmit(self, msg: wire._Msg) -> bool:
        raise NotImplementedError


def signed(msg: wire._Msg, signer: Identity, nonce: str) -> wire._Msg:
    """``msg`` signed by ``signer`` over ``nonce`` if it is something a router signs (an assignment)."""
    if isinstance(msg, wire.Assign | wire.Verify):
        return msg.model_copy(update={"sig": signer.sign(wire.signing_payload(msg, nonce))})
    return msg


@dataclass(eq=False, kw_only=True)
class MemoryLink(Link):
    """A node in the same process: ``deliver(text)`` gets every frame the router sends it, signed and encoded as
    it would go down a socket."""

    signer: Identity
    deliver: Callable[[str], Awaitable[None] | None]

    async def transmit(self, msg: wire._Msg) -> bool:
        out = self.deliver(wire.encode(signed(msg, self.signer, self.nonce)))
        if out is not None:
            await out
        return True


@dataclass(eq=False, kw_only=True)
class RelayLink(Link):
    """A node whose connection another router of the cluster holds (``holder``): messages go through the broker.

    Its load here is this router's own reservations on it plus what the holder last reported for everyone else
    (``elsewhere``); the holder checks capacity again when the assignment arrives and answers ``busy`` if the
    node has no room after all, so a node never runs more than it advertised.
    """

    holder: str  # the router that holds the connection
    forward: Callable[[str, str, wire._Msg], Awaitable[bool]]  # (holder, node, msg) -> sent to the broker
    elsewhere: int = 0  # tasks the node runs for other routers, as its holder last said
    refused: int = 0  # assignments its holder answered busy whose release must not reach the holder

    @property
    def local(self) -> bool:
        return False

    @property
    def free(self) -> int:
        return self.capacity - self.inflight - self.elsewhere

    async def transmit(self, msg: wire._Msg) -> bool:
        return await self.forward(self.holder, self.node, msg)
