"""``hivemesh``: the command line. Errors become one clear sentence and a non-zero exit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from hivemesh.config import MinerConfig, RouterConfig, SessionDefaults, default_data_dir
from hivemesh.errors import HivemeshError

app = typer.Typer(
    name="hivemesh",
    help="A community-powered, verifiable AI inference network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="All state lives under this folder.")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def _run(coro: Coroutine[Any, Any, None]) -> None:
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency via uvicorn[standard]
        runner = asyncio.run
    try:
        runner(coro)
    except KeyboardInterrupt:
        pass
    except HivemeshError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def tune_gc() -> None:
    """A router holds one connection per miner, each a few hundred long-lived objects; with 10,000 miners every
    full collection walks millions of them. What is loaded at start-up (modules, the app, the store) is moved out
    of the collector's sight (``gc.freeze``), and a younger generation is collected only after 50,000 allocations
    (CPython: 700), so the objects of a task in flight die young instead of reaching the oldest generation, whose
    collections are what grows with the number of connections."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


@app.command()
def router(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL; default SQLite in the data dir.")
    ] = None,
    ledger_url: Annotated[
        str | None,
        typer.Option(help="Ledger URL (postgresql+asyncpg://...); default SQLite ledger.db in the data dir."),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="The cluster's broker (redis://host:port/0): join the routers sharing this --database-url "
            "(network-wide rate limits, session changes)."
        ),
    ] = None,
    redundancy: Annotated[
        int, typer.Option("-k", "--redundancy", help="Default generators per task (exact/semantic).")
    ] = 3,
    quorum: Annotated[int, typer.Option("-m", "--quorum", help="Default generators that must agree.")] = 2,
    mode: Annotated[
        str,
        typer.Option(
            help="Default validation: token (verifiers check every token), exact, semantic or none."
        ),
    ] = "token",
    verifiers: Annotated[
        int, typer.Option("--verifiers", help="Default verifiers per answer (token mode).")
    ] = 1,
    tolerance: Annotated[
        str,
        typer.Option(
            help="Default token-mode tolerance: calibrated (exact between engines of one numeric profile, the "
            "calibrated tolerance across profiles) or exact (only profiled generators and same-profile verifiers)."
        ),
    ] = "calibrated",
    semantic: Annotated[
        bool, typer.Option(help="Load the embedding model (semantic mode, /v1/embeddings).")
    ] = True,
    log_level: LogLevel = "info",
) -> None:
    """Run a router: the OpenAI API for users and the WebSocket hub miners dial into."""
    from hivemesh.cli.compose import serve_router, setup_logging

    setup_logging(log_level)
    if mode not in ("token", "exact", "semantic", "none"):
        raise typer.BadParameter("mode must be token, exact, semantic or none")
    if not 1 <= verifiers <= 8:
        raise typer.BadParameter("verifiers must be between 1 and 8")
    if tolerance not in ("calibrated", "exact"):
        raise typer.BadParameter("tolerance must be calibrated or exact")
    defaults = SessionDefaults(
        redundancy=redundancy,
        quorum=min(quorum, redundancy),
        mode=mode,  # type: ignore[arg-type]
        verifiers=verifiers,
        tolerance=tolerance,  # type: ignore[arg-type]
    )
    cfg = RouterConfig(
        data_dir=data_dir or default_data_dir() / "router",
        host=host,
        port=port,
        database_url=database_url,
        ledger_url=ledger_url,
        defaults=defaults,
        semantic=semantic,
        cluster_url=cluster,
    )

    def ready(p: int, _service: object) -> None:
        tune_gc()
        print(f"router ready url=http://{host}:{p}", flush=True)

    _run(serve_router(cfg, ready))


@app.command()
def miner(
    router_url: Annotated[str, typer.Option("--router", help="The router's URL, e.g. http://1.2.3.4:8000")],
    data_dir: DataDir = None,
    engine: Annotated[
        str, typer.Option(help="llama (embedded llama.cpp), openai (an upstream server), instant")
    ] = "llama",
    model_path: Annotated[Path | None, typer.Option(help="GGUF file for the llama engine.")] = None,
    model_id: Annotated[str | None, typer.Option("--model", help="Model name to advertise.")] = None,
    upstream: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server for --engine openai.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads.")] = None,
    capacity: Annotated[int | None, typer.Option(help="Concurrent tasks to accept.")] = None,
    pool: Annotated[int, typer.Option(help="Stake pool this node claims.")] = 0,
    log_level: LogLevel = "info",
) -> None:
    """Run a miner: dial a router, serve a model, answer precommit/commit."""
    from hivemesh.cli.compose import run_miner, setup_logging

    setup_logging(log_level)
    if engine not in ("llama", "openai", "instant"):
        raise typer.BadParameter("engine must be llama, openai or instant")
    cfg = MinerConfig(
        router_url=router_url,
        data_dir=data_dir or default_data_dir() / "miner",
        engine=engine,  # type: ignore[arg-type]
        model_path=model_path,
        model_id=model_id,
        upstream_url=upstream,
        threads=threads,
        capacity=capacity,
        pool=pool,
    )

    def joined() -> None:
        print("miner joined", flush=True)

    _run(run_miner(cfg, joined))


@app.command()
def validator(
    router_url: Annotated[str, typer.Option("--router", help="The router's URL, e.g. http://1.2.3.4:8000")],
    data_dir: DataDir = None,
    checks: Annotated[
        str, typer.Option(help="Check set: standard (real models) or basic (any answer; the instant engine).")
    ] = "standard",
    ping_every: Annotated[float, typer.Option(help="Seconds between L1 pings of every node.")] = 10.0,
    l2_every: Annotated[float, typer.Option(help="Seconds between L2 capability rounds.")] = 120.0,
    log_level: LogLevel = "info",
) -> None:
    """Run a validator (oracle): liveness pings, capability tests and canaries, signed with its own key."""
    from hivemesh.cli.compose import setup_logging
    from hivemesh.identity import Identity
    from hivemesh.validator.agent import ValidatorAgent
    from hivemesh.validator.checks import CHECK_SETS
    from hivemesh.validator.config import ValidatorConfig

    setup_logging(log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per signed call is noise
    if checks not in CHECK_SETS:
        raise typer.BadParameter(f"checks must be one of {', '.join(CHECK_SETS)}")
    cfg = ValidatorConfig(checks=CHECK_SETS[checks], ping_every_s=ping_every, l2_every_s=l2_every)
    identity = Identity.load_or_create((data_dir or default_data_dir() / "validator") / "validator.key")

    def ready() -> None:
        print(f"validator ready address={identity.address}", flush=True)

    async def serve() -> None:
        await ValidatorAgent(router_url, identity, cfg).run(ready)

    _run(serve())


@app.command()
def up(
    miners: Annotated[int, typer.Option("--miners", "-n", help="How many miners to start.")] = 3,
    port: Annotated[int, typer.Option(help="Router port.")] = 8000,
    data_dir: DataDir = None,
    engine: Annotated[str, typer.Option(help="Miner engine: llama or instant.")] = "llama",
    redundancy: Annotated[int, typer.Option("-k", "--redundancy")] = 3,
    quorum: Annotated[int, typer.Option("-m", "--quorum")] = 2,
    mode: Annotated[str, typer.Option(help="token, exact, semantic or none")] = "token",
    routers: Annotated[
        int,
        typer.Option(
            help="Routers: above 1, a local cluster on private PostgreSQL and Redis (Debian's binaries)."
        ),
    ] = 1,
    chain: Annotated[
        str | None,
        typer.Option(help="local: run the ledger on a local anvil chain (stake and payments on chain)."),
    ] = None,
    semantic: Annotated[
        bool, typer.Option(help="The router loads the embedding model (semantic mode, /v1/embeddings).")
    ] = True,
) -> None:
    """Start a whole local network (one router, N miners, each its own process) and keep it running."""
    from hivemesh.cli.up import run_up

    if miners < 1:
        raise typer.BadParameter("--miners must be at least 1")
    if chain not in (None, "local"):
        raise typer.BadParameter("--chain takes local (anvil); for another chain use hivemesh chain deploy")
    if routers > 1:  # one network over several routers: presence, relaying and task leases on Redis
        from hivemesh.cli.cluster_up import run_cluster_up

        with contextlib.suppress(KeyboardInterrupt):
            raise typer.Exit(
                run_cluster_up(
                    routers=routers,
                    miners=miners,
                    port=port,
                    data_dir=data_dir or default_data_dir(),
                    engine=engine,
                    redundancy=redundancy,
                    quorum=quorum,
                    mode=mode,
                )
            )
        return
    with contextlib.suppress(KeyboardInterrupt):
        code = run_up(
            miners=miners,
            port=port,
            data_dir=data_dir or default_data_dir(),
            engine=engine,
            redundancy=redundancy,
            quorum=quorum,
            mode=mode,
            chain=chain,
            semantic=semantic,
        )
        raise typer.Exit(code)


def main() -> None:
    from hivemesh.cli.chain import chain_app
    from hivemesh.cli.money import register

    register(app)
    app.add_typer(chain_app, name="chain")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
