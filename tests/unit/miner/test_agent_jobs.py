"""The miner's job table: every job it took leaves it, however the job ended (no socket: a scripted router)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hivemesh.config import MinerConfig
from hivemesh.engines.instant import InstantEngine
from hivemesh.identity import Identity
from hivemesh.miner.agent import MinerAgent
from hivemesh.protocol import wire

NONCE = "n0"


class ScriptedRouter:
    """Stands in for the router's WebSocket: a challenge, a welcome, then ``frames`` delivered back to back."""

    def __init__(self, router: Identity, frames: list[wire.Assign | wire.Cancel]) -> None:
        self.handshake = [
            wire.encode(wire.Challenge(nonce=NONCE, router=router.address)),
            wire.encode(wire.Welcome(node="x")),
        ]
        self.frames = [wire.encode(f) for f in frames]
        self.sent: list[str] = []

    async def recv(self) -> str:
        return self.handshake.pop(0)

    async def send(self, data: str) -> None:
        self.sent.append(data)

    async def _frames(self) -> AsyncIterator[str]:
        for f in self.frames:  # no await between frames: both are already in the socket's buffer
            yield f

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()


def signed_assign(router: Identity, task_id: str) -> wire.Assign:
    msg = wire.Assign(
        task_id=task_id,
        model="instant-echo",
        kind="completion",
        prompt="hi",
        params=wire.SamplingParams(temperature=0, max_tokens=50),
        deadline_ms=5000,
    )
    return msg.model_copy(update={"sig": router.sign(wire.signing_payload(msg, NONCE))})


def agent(tmp_path: Path, capacity: int) -> MinerAgent:
    config = MinerConfig(
        router_url="http://127.0.0.1:1", data_dir=tmp_path, engine="instant", capacity=capacity
    )
    return MinerAgent(config, Identity.generate(), InstantEngine(tokens=50, token_delay_s=0.05))


def test_a_job_cancelled_before_it_started_frees_its_capacity(tmp_path: Path) -> None:
    router = Identity.generate()
    miner = agent(tmp_path, capacity=1)
    frames: list[Any] = [signed_assign(router, "t1"), wire.Cancel(task_id="t1", reason="task ended")]

    async def go() -> None:
        await miner._session(ScriptedRouter(router, frames), None)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the cancelled job's done callbacks

    asyncio.run(go())
    assert miner.jobs == {}  # it held the only unit of capacity: every later assignment would be ignored


def test_a_cancelled_running_job_leaves_and_an_unknown_cancel_is_ignored(tmp_path: Path) -> None:
    router = Identity.generate()
    miner = agent(tmp_path, capacity=2)

    async def go() -> None:
        ws = ScriptedRouter(router, [signed_assign(router, "t1"), wire.Cancel(task_id="other")])
        await miner._session(ws, None)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # t1 runs (ack sent, tokens generating)
        assert set(miner.jobs) == {"t1"}
        job = miner.jobs["t1"]
        assert job.task is not None
        job.task.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert miner.jobs == {}
        assert any('"ack"' in s for s in ws.sent)

    asyncio.run(go())
