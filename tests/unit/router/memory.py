"""A miner joined to a hub in memory: the real ``MinerAgent`` on one end, a ``MemoryLink`` on the other.

``join(hub, agent)`` opens the connection the way a socket would (challenge, signed hello, welcome) and returns a
``Pipe``; the hub's messages reach the agent through the link's ``deliver`` and the agent's frames reach the hub
through ``MinerHub.receive``, checked as if they came off a WebSocket. ``Pipe.cut()`` is the connection dropping.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from hivemesh.identity import verify
from hivemesh.miner.agent import MinerAgent
from hivemesh.protocol import wire
from hivemesh.router.hub import MinerHub
from hivemesh.router.links import MemoryLink


class Closed(Exception):
    pass


class Pipe:
    """The miner's end: what ``MinerAgent._session`` reads (``recv``, async iteration) and writes (``send``)."""

    def __init__(self, hub: MinerHub) -> None:
        self.hub = hub
        self.nonce = secrets.token_hex(16)
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.link: MemoryLink | None = None
        self.task: asyncio.Task[None] | None = None
        self.sent: list[wire.ToMiner] = []  # everything the router sent, decoded
        self.inbox.put_nowait(wire.encode(wire.Challenge(nonce=self.nonce, router=hub.identity.address)))

    def _deliver(self, text: str) -> None:
        self.sent.append(wire.decode_to_miner(text))
        self.inbox.put_nowait(text)

    async def recv(self) -> str:
        text = await self.inbox.get()
        if text is None:
            raise Closed
        return text

    def __aiter__(self) -> Pipe:
        return self

    async def __anext__(self) -> str:
        text = await self.inbox.get()
        if text is None:
            raise StopAsyncIteration
        return text

    async def send(self, text: str) -> None:
        if self.link is None:  # the hello: checked as the hub checks one off a socket
            hello = wire.decode_from_miner(text)
            assert isinstance(hello, wire.Hello)
            verify(wire.signing_payload(hello, self.nonce), hello.sig, hello.node)
            self.link = MemoryLink(
                node=hello.node,
                nonce=self.nonce,
                models=frozenset(c.id for c in hello.models),
                cards=hello.models,
                capacity=hello.capacity,
                pool=hello.pool,
                signer=self.hub.identity,
                deliver=self._deliver,
            )
            await self.hub.attach(self.link)
            self.inbox.put_nowait(wire.encode(wire.Welcome(node=hello.node)))
            return
        if not self.link.closed and not self.hub.receive(self.link, text):
            await self.cut()

    async def cut(self) -> None:
        """The connection drops: the hub forgets the node, the agent stops."""
        self.inbox.put_nowait(None)
        if self.link is not None:
            await self.hub.disconnect(self.link.node, "disconnected")
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Closed):
                await self.task


async def join(hub: MinerHub, agent: MinerAgent) -> Pipe:
    pipe = Pipe(hub)
    joined = asyncio.Event()
    pipe.task = asyncio.create_task(agent._session(pipe, joined.set))  # type: ignore[arg-type]
    await asyncio.wait_for(joined.wait(), 5)
    return pipe
