"""The composition root: the one place that picks concrete classes and wires them together."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from hivemesh.cluster.broker import Broker
from hivemesh.config import MinerConfig, RouterConfig
from hivemesh.dashboard import dashboard_routes
from hivemesh.engines.base import Engine
from hivemesh.identity import Identity
from hivemesh.ledger import Ledger
from hivemesh.miner.agent import MinerAgent
from hivemesh.router.app import build_app
from hivemesh.router.auth import LedgerKeys, StaticKeys
from hivemesh.router.metrics import install_metrics, metrics_route
from hivemesh.router.network_api import NetworkApi
from hivemesh.router.service import RouterService
from hivemesh.store.db import Store

log = logging.getLogger(__name__)


def read_lines(path: Path) -> tuple[str, ...]:
    """A one-entry-a-line file of the router's data dir (``api_keys.txt``: key hashes; ``validators.txt``:
    addresses allowed on the network API); blank lines and ``#`` comments skipped; missing file: none."""
    if not path.exists():
        return ()
    return tuple(s for line in path.read_text().splitlines() if (s := line.strip()) and not s.startswith("#"))


def load_embedder(enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from hivemesh.engines.embedder import Embedder

        return Embedder.load()
    except Exception as exc:  # the semantic extra is optional: fall back to exact agreement
        log.warning("embedding model unavailable, semantic validation falls back to exact error=%s", exc)
        return None


_LOAD = object()


async def open_ledger(config: RouterConfig) -> Ledger:
    """SQL, or the evm back-end when the data dir holds ``chain.json`` (``hivemesh chain deploy``)."""
    from hivemesh.cli.chain import open_ledger_for

    config.data_dir.mkdir(parents=True, exist_ok=True)
    return await open_ledger_for(config)


async def build_router(config: RouterConfig, embedder: Any = _LOAD) -> tuple[Any, RouterService, Store]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    identity = Identity.load_or_create(config.data_dir / "router.key")
    # the cluster's broker first: an unreachable one is one sentence before anything else is opened
    broker = await Broker.connect(config.cluster_url) if config.cluster_url else None
    store = await Store.open(config.db_url)
    if embedder is _LOAD:
        embedder = await asyncio.to_thread(load_embedder, config.semantic)
    ledger = await open_ledger(config)
    service = RouterService(config, store, identity, embedder, ledger=ledger, broker=broker)
    auth = LedgerKeys(StaticKeys(config.api_keys or read_lines(config.data_dir / "api_keys.txt")), ledger)
    install_metrics(service)
    network = NetworkApi(service, config.validators or read_lines(config.data_dir / "validators.txt"))
    extra = [*dashboard_routes(service), metrics_route(service), *network.routes()]
    app = build_app(service, auth, extra_routes=extra)
    return app, service, store


async def serve_router(
    config: RouterConfig,
    on_ready: Callable[[int, RouterService], None] | None = None,
    *,
    embedder: Any = _LOAD,
) -> None:
    """Serve until cancelled; ``on_ready(port, service)`` is called once the socket accepts connections."""
    app, service, store = await build_router(config, embedder)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        await store.close()
        if service.ledger is not None:
            await service.ledger.close()
        if service.broker is not None:
            await service.broker.close()
        raise OSError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            http="httptools",
            ws="websockets-sansio",
            ws_max_size=4 * 1024 * 1024,
            ws_per_message_deflate=False,  # small JSON frames: compression costs more CPU than it saves
            ws_ping_interval=20,
            ws_ping_timeout=20,
            timeout_graceful_shutdown=3,
            backlog=4096,
        )
    )
    started = asyncio.Event()

    async def serve() -> None:
        config_started = server.startup

        async def startup(sockets: Any = None) -> None:
            await config_started(sockets)
            started.set()

        server.startup = startup  # type: ignore[method-assign]
        await server.serve(sockets=[sock])

    task = asyncio.create_task(serve(), name="uvicorn-serve")
    try:
        await asyncio.wait({task, asyncio.ensure_future(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if server.started:
            log.info(
                "router listening url=http://%s:%d address=%s", config.host, port, service.identity.address
            )
            if on_ready:
                on_ready(port, service)
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
    finally:
        await store.close()
        if service.ledger is not None:
            await service.ledger.close()


def build_engine(config: MinerConfig) -> Engine:
    if config.engine == "instant":
        from hivemesh.engines.instant import InstantEngine

        return InstantEngine(config.model_id or "instant-echo", capacity=config.capacity or 256)
    if config.engine == "openai":
        from hivemesh.engines.upstream import UpstreamEngine

        if not config.upstream_url:
            raise SystemExit("--upstream URL is required with --engine openai")
        return UpstreamEngine(config.upstream_url, model=config.model_id, capacity=config.capacity or 8)
    from hivemesh.engines.llamacpp import DEFAULT_MODEL_ID, LlamaCppEngine

    return LlamaCppEngine(
        config.model_path, model_id=config.model_id or DEFAULT_MODEL_ID, n_threads=config.threads
    )


async def run_miner(config: MinerConfig, on_join: Callable[[], None] | None = None) -> None:
    identity = Identity.load_or_create(config.data_dir / "node.key")
    engine = build_engine(config)
    log.info("miner starting node=%s engine=%s", identity.address, engine.name)
    await engine.start()
    try:
        await MinerAgent(config, identity, engine).run(on_join)
    finally:
        await engine.close()


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
