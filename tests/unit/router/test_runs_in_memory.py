"""The scheduler and both task runners, end to end without a socket: real miners (``MinerAgent`` on the instant
engine) joined to the hub through in-memory links (``router.links.MemoryLink``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hivemesh.config import MinerConfig, RouterConfig
from hivemesh.engines.instant import InstantEngine
from hivemesh.errors import NoMinerAvailable
from hivemesh.identity import Identity
from hivemesh.miner.agent import MinerAgent
from hivemesh.protocol import wire
from hivemesh.router.domain import Outcome, SessionSpec, TaskSpec
from hivemesh.router.service import RouterService
from hivemesh.store.db import Store

from .memory import Pipe, join

MODEL = "instant-echo"


@dataclass
class Net:
    service: RouterService
    tmp: Path
    pipes: list[Pipe]

    async def miner(self, engine: InstantEngine | None = None) -> Pipe:
        engine = engine or InstantEngine(MODEL)
        cfg = MinerConfig(router_url="memory://", data_dir=self.tmp, engine="instant")
        agent = MinerAgent(cfg, Identity.generate(), engine)
        pipe = await join(self.service.hub, agent)
        self.pipes.append(pipe)
        return pipe

    async def session(self, **fields: object) -> SessionSpec:
        return await self.service.sessions.create("tester", **fields)

    async def ask(self, session: SessionSpec, text: str = "hello there") -> Outcome:
        spec = TaskSpec(
            id=f"task_{uuid.uuid4().hex}",
            session=session,
            model=MODEL,
            kind="chat",
            params=wire.SamplingParams(max_tokens=8, temperature=0.0),
            messages=(wire.ChatMessage(role="user", content=text),),
        )
        run = await self.service.submit(spec, stream=False)
        return await asyncio.wait_for(run.answer, 10)

    async def ended(self, task_id: str) -> dict[str, object]:
        """The task's row once the task has ended (the answer can go out while a straggler still works)."""
        for _ in range(500):
            row = await self.service.store.get_task(task_id)
            if row is not None and row["phase"] in ("ended", "failed"):
                return dict(row)
            await asyncio.sleep(0.01)
        raise AssertionError(f"task {task_id} did not end")


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'router.db'}")
    service = RouterService(
        RouterConfig(data_dir=tmp_path, semantic=False, queue_timeout_s=5), store, Identity.generate()
    )
    await service.start()
    n = Net(service, tmp_path, [])
    try:
        yield n
    finally:
        for p in n.pipes:  # bounded, so a failing test reports instead of hanging in its teardown
            await asyncio.wait_for(p.cut(), 5)
        await asyncio.wait_for(service.close(), 10)
        await store.close()


async def test_voting_task_is_verified_by_three_miners(net: Net) -> None:
    for _ in range(4):
        await net.miner()
    out = await net.ask(await net.session(redundancy=3, quorum=2, mode="exact"))
    assert out.verdict == "verified" and len(out.miners) == 3 and len(out.consensus) >= 2
    row = await net.ended(out.task_id)
    draw = row["draw"]
    assert isinstance(draw, dict) and draw["eligible"] == 4 and draw["taken"] == list(out.miners)


async def test_token_task_is_verified_by_a_generator_and_a_verifier(net: Net) -> None:
    for _ in range(3):
        await net.miner()
    out = await net.ask(await net.session(mode="token", verifiers=1))
    assert out.verdict == "verified" and out.mode == "token"
    assert out.answered_by not in out.verifiers and len(out.verifiers) == 1


async def test_a_miner_that_drops_is_replaced_from_the_shuffle(net: Net) -> None:
    pipes = [await net.miner(InstantEngine(MODEL, tokens=6, token_delay_s=0.05)) for _ in range(4)]
    session = await net.session(redundancy=3, quorum=3, mode="exact")
    task = asyncio.create_task(net.ask(session))
    victim = None
    for _ in range(200):  # the first assignment out: cut that miner
        victim = next((p for p in pipes if any(isinstance(m, wire.Assign) for m in p.sent)), None)
        if victim is not None:
            break
        await asyncio.sleep(0.005)
    assert victim is not None and victim.link is not None
    await victim.cut()
    out = await task
    assert out.verdict == "verified" and len(out.consensus) == 3 and victim.link.node not in out.consensus
    row = await net.ended(out.task_id)
    assert row["candidates"] == list(out.miners)  # the draw read the victim, then its replacement


async def test_capacity_is_never_exceeded_and_tasks_queue(net: Net) -> None:
    pipes = [
        await net.miner(InstantEngine(MODEL, capacity=1, tokens=4, token_delay_s=0.02)) for _ in range(2)
    ]
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, sum(p.link.inflight for p in pipes if p.link is not None))

    net.service.hub.listeners.append(watch)
    session = await net.session(redundancy=1, quorum=1, mode="none")
    outs = await asyncio.gather(*(net.ask(session, f"q{i}") for i in range(6)))
    assert all(o.verdict == "unverified" for o in outs) and peak <= 2
    assert all(p.link is not None and p.link.inflight == 0 for p in pipes)


async def test_no_miner_for_the_model_is_503_at_once(net: Net) -> None:
    with pytest.raises(NoMinerAvailable):
        await net.ask(await net.session(redundancy=1, quorum=1, mode="none"))
