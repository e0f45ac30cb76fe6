"""A router host that vanishes leaves a half-open connection (no FIN, no RST): the miner must notice it by its pings
and dial again, so that another router of a cluster can take the node, instead of idling on a dead socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
import websockets

from hivemesh.config import MinerConfig
from hivemesh.engines.instant import InstantEngine
from hivemesh.identity import Identity
from hivemesh.miner import agent as agent_module
from hivemesh.miner.agent import MinerAgent
from hivemesh.protocol import wire


class Blackhole:
    """A TCP proxy to ``port`` that, once ``silent`` is set, swallows every byte both ways and keeps the sockets
    open: to the miner the router is still connected, and says nothing, answers no ping."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent = asyncio.Event()
        self.accepted: list[float] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.silent.is_set():
                    writer.write(data)
                    await writer.drain()

    async def on_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        sr, sw = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [cw, sw]
        for t in (asyncio.create_task(self._pipe(cr, sw)), asyncio.create_task(self._pipe(sr, cw))):
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        for w in self.writers:
            w.close()


@pytest.mark.timeout(60)
def test_a_silent_router_is_left_within_the_ping_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # scaled down from 10 s + 10 s + 2 s so the test is quick; websockets' defaults (20 + 20 + 10 s) would fail it
    monkeypatch.setattr(agent_module, "PING_INTERVAL_S", 0.3)
    monkeypatch.setattr(agent_module, "PING_TIMEOUT_S", 0.7)
    monkeypatch.setattr(agent_module, "CLOSE_TIMEOUT_S", 0.5)
    router = Identity.generate()
    welcomed: list[float] = []

    async def serve(ws: websockets.ServerConnection) -> None:
        await ws.send(wire.encode(wire.Challenge(nonce="n0", router=router.address)))
        hello = wire.decode_from_miner(await ws.recv())
        assert isinstance(hello, wire.Hello)
        await ws.send(wire.encode(wire.Welcome(node=hello.node)))
        await ws.wait_closed()  # stays connected, as a router whose host vanished would seem to

    async def go() -> float:
        async with websockets.serve(serve, "127.0.0.1", 0, ping_interval=None, close_timeout=0.5) as server:
            proxy = Blackhole(server.sockets[0].getsockname()[1])
            front = await asyncio.start_server(proxy.on_client, "127.0.0.1", 0)
            port = front.sockets[0].getsockname()[1]
            config = MinerConfig(
                router_url=f"http://127.0.0.1:{port}", data_dir=tmp_path, engine="instant", capacity=1
            )
            miner = MinerAgent(config, Identity.generate(), InstantEngine(tokens=5))

            def joined() -> None:
                welcomed.append(time.monotonic())
                proxy.silent.set()  # from now on the router's host is gone without a word

            run = asyncio.create_task(miner.run(on_join=joined))
            try:
                while len(proxy.accepted) < 2:
                    await asyncio.sleep(0.05)
                    if run.done():
                        run.result()
            finally:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                await proxy.close()
                front.close()
            return proxy.accepted[1] - welcomed[0]

    waited = asyncio.run(asyncio.wait_for(go(), 30))
    assert len(welcomed) == 1  # joined once, then the silence
    assert waited < 0.3 + 0.7 + 0.5 + 2.0  # ping interval + ping timeout + close timeout + back-off and slack
