"""A swarm of light miners in one process: real WebSocket connections and signed messages, no engine.

Each miner dials a router, answers the challenge with a signed hello (exact-mode voting only: no token ids, no
verification), and for every assignment acks, precommits ``sha256(salt || output)`` and reveals when asked; the
output is a function of the prompt, so honest miners agree. Used by ``bench/cluster.py`` (tasks/s with 100 to
10,000 connected miners) and by the cluster integration tests (miners spread over several routers).

    python -m bench.swarm --router http://127.0.0.1:8000 --router http://127.0.0.1:8001 -n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

from hivemesh.identity import Identity
from hivemesh.protocol import wire

log = logging.getLogger("bench.swarm")
MODEL = "instant-echo"


def answer(msg: wire.Assign) -> str:
    """What every honest swarm miner answers: a function of the request only."""
    body = msg.prompt + "|".join(m.content for m in msg.messages)
    return "echo " + hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(eq=False)
class LightMiner:
    identity: Identity
    router: str  # http URL
    capacity: int = 4
    model: str = MODEL
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    served: int = 0
    _pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (output, salt hex)

    def _sign(self, msg: wire._Msg, nonce: str) -> str:
        return wire.encode(
            msg.model_copy(update={"sig": self.identity.sign(wire.signing_payload(msg, nonce))})
        )

    async def run(self) -> None:
        """Serve until cancelled, dialling again after a lost connection."""
        url = self.router.replace("http://", "ws://").rstrip("/") + "/ws/miner"
        while True:
            try:
                async with connect(url, open_timeout=30, ping_interval=None, compression=None) as ws:
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost router: dial again
                log.warning("swarm miner reconnects error=%r", exc)
            self.joined.clear()
            await asyncio.sleep(0.5 + secrets.randbelow(500) / 1000)

    async def _session(self, ws: ClientConnection) -> None:
        first = wire.decode_to_miner(await ws.recv())
        assert isinstance(first, wire.Challenge)
        nonce = first.nonce
        card = wire.ModelCard(id=self.model, engine="swarm", context_length=4096)
        hello = wire.Hello(
            node=self.identity.address, nonce=nonce, models=(card,), capacity=self.capacity, version="swarm"
        )
        await ws.send(self._sign(hello, nonce))
        welcome = wire.decode_to_miner(await ws.recv())
        assert isinstance(welcome, wire.Welcome)
        self.joined.set()
        me = self.identity.address
        async for raw in ws:
            msg = wire.decode_to_miner(raw)
            if isinstance(msg, wire.Assign):
                output = answer(msg)
                salt = secrets.token_hex(8)
                await ws.send(self._sign(wire.Ack(task_id=msg.task_id, node=me), nonce))
                usage = wire.Usage(prompt_tokens=4, completion_tokens=2)
                if msg.reveal == "immediate":
                    await ws.send(self._commit(msg.task_id, output, salt, usage, nonce))
                    continue
                digest = wire.commit_digest(bytes.fromhex(salt), output)
                pre = wire.Precommit(
                    task_id=msg.task_id,
                    node=me,
                    digest=digest,
                    usage=usage,
                    finish_reason="stop",
                    elapsed_ms=1,
                )
                self._pending[msg.task_id] = (output, salt)
                await ws.send(self._sign(pre, nonce))
            elif isinstance(msg, wire.RevealRequest):
                if (got := self._pending.pop(msg.task_id, None)) is not None:
                    usage = wire.Usage(prompt_tokens=4, completion_tokens=2)
                    await ws.send(self._commit(msg.task_id, got[0], got[1], usage, nonce))
            elif isinstance(msg, wire.Cancel):
                self._pending.pop(msg.task_id, None)
            elif isinstance(msg, wire.Ping):
                await ws.send(wire.encode(wire.Pong(nonce=msg.nonce)))

    def _commit(self, task_id: str, output: str, salt: str, usage: wire.Usage, nonce: str) -> str:
        self.served += 1
        c = wire.Commit(
            task_id=task_id,
            node=self.identity.address,
            output=output,
            salt=salt,
            usage=usage,
            finish_reason="stop",
            elapsed_ms=1,
        )
        return self._sign(c, nonce)


class Swarm:
    """``n`` light miners spread round-robin over ``routers``, joined ``concurrency`` at a time."""

    def __init__(self, routers: list[str], n: int, *, capacity: int = 4, concurrency: int = 200) -> None:
        self.miners = [
            LightMiner(Identity.generate(), routers[i % len(routers)], capacity=capacity) for i in range(n)
        ]
        self.concurrency = concurrency
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, within_s: float = 300.0) -> float:
        """Dial every miner in; returns the seconds it took for all to be welcomed."""
        t0 = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(m: LightMiner) -> None:
            async with gate:
                self._tasks.append(asyncio.create_task(m.run()))
                await m.joined.wait()

        await asyncio.wait_for(asyncio.gather(*(one(m) for m in self.miners)), within_s)
        return time.monotonic() - t0

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def _main(args: argparse.Namespace) -> None:
    swarm = Swarm(args.router, args.n, capacity=args.capacity)
    took = await swarm.start()
    print(
        f"swarm joined n={args.n} routers={len(args.router)} took_s={took:.1f} pid={os.getpid()}", flush=True
    )
    try:
        await asyncio.Event().wait()
    finally:
        await swarm.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--router", action="append", required=True, help="a router URL (repeat: miners spread)")
    p.add_argument("-n", type=int, default=100, help="light miners")
    p.add_argument("--capacity", type=int, default=4, help="concurrent tasks each miner advertises")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
