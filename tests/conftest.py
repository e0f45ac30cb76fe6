"""Shared fixtures: a real router and real miners on 127.0.0.1, driven from the test thread.

The network runs on its own event loop in a background thread (``LoopThread``), so tests can use the official
synchronous ``openai`` client exactly as a user would. Nothing here sleeps to wait: readiness is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings

from hivemesh.config import MinerConfig, RouterConfig, SessionDefaults
from hivemesh.router.auth import key_hash

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

settings.register_profile("hivemesh", deadline=None)  # 2 shared cores: wall-clock deadlines only add flakes
settings.load_profile("hivemesh")

T = TypeVar("T")
API_KEY = "hm-test-key-0123456789"


def until(cond: Callable[[], object], timeout: float = 15.0) -> None:
    """Wait (polling every 20 ms, from a test's thread) until ``cond()`` holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="network-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout=20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


_EMBEDDER: Any = None


def shared_embedder() -> Any:
    """The embedding model, loaded once per test session (5-7 s)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from hivemesh.engines.embedder import Embedder

        _EMBEDDER = Embedder.load()
    return _EMBEDDER


@dataclass
class Network:
    lt: LoopThread
    data_dir: Path
    url: str = ""
    service: Any = None
    miners: dict[str, Future[Any]] = field(default_factory=dict)
    agents: dict[str, Any] = field(default_factory=dict)
    # engines the fixture built (closed with their miner)
    engines: dict[str, Any] = field(default_factory=dict)
    _router: asyncio.Future[Any] | None = None
    _router_cfg: RouterConfig | None = None
    _embedder: Any = None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start_router(
        self,
        *,
        defaults: SessionDefaults | None = None,
        embedder: Any = None,
        port: int = 0,
        extra_keys: tuple[str, ...] = (),
        **kw: Any,
    ) -> str:
        from hivemesh.cli.compose import serve_router

        cfg = RouterConfig(
            data_dir=self.data_dir / "router",
            port=port,
            api_keys=tuple(key_hash(k) for k in (API_KEY, *extra_keys)),
            defaults=defaults or SessionDefaults(redundancy=1, quorum=1, mode="none"),
            semantic=False,
            **kw,
        )
        self._router_cfg = cfg
        self._embedder = embedder

        async def start() -> int:
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

            def on_ready(p: int, service: Any) -> None:
                self.service = service
                ready.set_result(p)

            self._router = asyncio.ensure_future(serve_router(cfg, on_ready, embedder=embedder))
            done, _ = await asyncio.wait(
                {self._router, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            if self._router in done:
                self._router.result()
            return ready.result()

        port_ = self.lt.run(start())
        self.url = f"http://127.0.0.1:{port_}"
        return self.url

    def stop_router(self) -> None:
        router, self._router = self._router, None
        if router is None:
            return

        async def stop() -> None:
            router.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await router

        self.lt.run(stop(), timeout=30)

    def add_miner(
        self, name: str, *, engine: str = "instant", wait: bool = True, engine_obj: Any = None, **kw: Any
    ) -> Any:
        from hivemesh.cli.compose import build_engine
        from hivemesh.identity import Identity
        from hivemesh.miner.agent import MinerAgent

        cfg = MinerConfig(router_url=self.url, data_dir=self.data_dir / "miners" / name, engine=engine, **kw)  # type: ignore[arg-type]

        async def start() -> Any:
            identity = Identity.load_or_create(cfg.data_dir / "node.key")
            eng = engine_obj or build_engine(cfg)
            await eng.start()
            if engine_obj is None:
                self.engines[name] = eng
            agent = MinerAgent(cfg, identity, eng)
            joined = asyncio.Event()
            task = asyncio.ensure_future(agent.run(joined.set))
            if wait:
                await asyncio.wait_for(joined.wait(), 60)
            return agent, task

        agent, task = self.lt.run(start())
        self.agents[name] = agent
        self.miners[name] = task
        return agent

    def add_staked_miner(self, name: str, pool: int = 1, **kw: Any) -> Any:
        """A miner whose node is staked for ``pool`` (its minimum) before it dials in: billed user work goes only
        to nodes staked above pool 0."""
        from hivemesh.identity import Identity

        identity = Identity.load_or_create(self.data_dir / "miners" / name / "node.key")
        need = self.service.config.billing.stake_pools[pool]
        if need:
            self.lt.run(self.service.ledger.deposit(identity.address, need))
            self.lt.run(self.service.ledger.stake(identity.address, need, pool))
        return self.add_miner(name, pool=pool, **kw)

    def kill_miner(self, name: str) -> None:
        task = self.miners.pop(name)
        engine = self.engines.pop(name, None)

        async def kill() -> None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if engine is not None:  # e.g. an upstream engine's HTTP client: no socket left to the GC
                await engine.close()

        self.lt.run(kill())

    def wait_miners(self, n: int, timeout: float = 30) -> None:
        async def wait() -> None:
            while len(self.service.hub.links) != n:  # noqa: ASYNC110 - the hub has no event for this
                await asyncio.sleep(0.01)

        self.lt.run(asyncio.wait_for(wait(), timeout))

    def close(self) -> None:
        for name in list(self.miners):
            self.kill_miner(name)
        self.stop_router()

    def client(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=API_KEY, max_retries=0, timeout=60, **kw)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    lt = LoopThread()
    net = Network(lt, tmp_path)
    try:
        yield net
    finally:
        try:
            net.close()
        finally:
            lt.stop()
