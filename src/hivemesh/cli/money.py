"""Ledger commands: ``hivemesh keys``, ``deposit``, ``stake``, ``unstake``, ``balance``, ``ledger verify``.

They open the router's ledger directly (the SQLite file in the router's data dir, or ``--ledger-url`` for
PostgreSQL), so they work whether or not the router is running: SQLite in WAL mode takes both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from hivemesh.config import COR, RouterConfig, default_data_dir
from hivemesh.errors import HivemeshError
from hivemesh.identity import Identity
from hivemesh.ledger import Ledger, format_cor

T = TypeVar("T")
console = Console()

RouterDir = Annotated[
    Path | None, typer.Option("--data-dir", help="The router's data folder (holds ledger.db).")
]
LedgerUrl = Annotated[
    str | None, typer.Option("--ledger-url", help="SQLAlchemy URL of the ledger (PostgreSQL).")
]

keys_app = typer.Typer(help="API keys bound to ledger accounts.", no_args_is_help=True)
ledger_app = typer.Typer(help="Ledger integrity.", no_args_is_help=True)


def parse_cor(text: str) -> int:
    """'1.5' COR -> 1500000000000000000 (the smallest unit). Exact: no float on the way."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not an amount of COR") from None
    units = value * COR
    if value <= 0 or units != units.to_integral_value():
        raise typer.BadParameter("the amount must be positive with at most 18 decimals")
    return int(units)


KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file", help="The node's key file (node.key): a ledger on a chain needs its signature."
    ),
]


def run_ledger(
    data_dir: Path | None, url: str | None, fn: Callable[[Ledger], Awaitable[T]], key_file: Path | None = None
) -> T:
    """Run ``fn`` on the router's ledger: SQL, or the chain when the data dir holds ``chain.json``."""
    from hivemesh.cli.chain import open_ledger_for

    cfg = RouterConfig(data_dir=data_dir or default_data_dir() / "router", ledger_url=url)

    async def go() -> T:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        signers = [Identity.load_or_create(key_file)] if key_file else []
        ledger = await open_ledger_for(cfg, signers)
        try:
            return await fn(ledger)
        finally:
            await ledger.close()

    try:
        return asyncio.run(go())
    except HivemeshError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="The account (0x address) the key spends from.")],
    name: Annotated[str, typer.Option(help="A label.")] = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Expire after this many days.")] = None,
    data_dir: RouterDir = None,
    ledger_url: LedgerUrl = None,
) -> None:
    """Create an API key; prints it once (only its hash is stored)."""
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None

    async def go(ledger: Ledger) -> tuple[str, str]:
        return await ledger.create_key(account, name=name, rpm=rpm, tpm=tpm, expires_at=expires)

    key_id, secret = run_ledger(data_dir, ledger_url, go)
    console.print(f"key id: {key_id}")
    print(secret)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: RouterDir = None, ledger_url: LedgerUrl = None) -> None:
    """Revoke an API key at once (the router's cache forgets it within seconds)."""
    run_ledger(data_dir, ledger_url, lambda lg: lg.revoke(key_id))
    console.print(f"revoked {key_id}")


@keys_app.command("list")
def keys_list(account: str, data_dir: RouterDir = None, ledger_url: LedgerUrl = None) -> None:
    """List an account's keys (never their secrets)."""
    infos = run_ledger(data_dir, ledger_url, lambda lg: lg.list_keys(account))
    table = Table("key id", "name", "rpm", "tpm", "expires", "revoked")
    for k in infos:
        table.add_row(
            k.key_id,
            k.name,
            str(k.rpm or "-"),
            str(k.tpm or "-"),
            str(k.expires_at or "-"),
            str(k.revoked_at or "-"),
        )
    console.print(table)


def deposit(
    account: Annotated[str, typer.Argument(help="0x address to credit.")],
    amount: Annotated[str, typer.Argument(help="COR, e.g. 100 or 0.5")],
    data_dir: RouterDir = None,
    ledger_url: LedgerUrl = None,
) -> None:
    """Credit an account from outside the network."""
    units = parse_cor(amount)

    async def go(ledger: Ledger) -> int:
        await ledger.deposit(account, units, reason="deposit from the CLI")
        return await ledger.balance(account)

    console.print(f"{account} balance: {format_cor(run_ledger(data_dir, ledger_url, go))}")


def stake(
    node: Annotated[str, typer.Argument(help="The node's address (its id).")],
    amount: Annotated[str, typer.Argument(help="COR to move from the node's balance into its stake.")],
    pool: Annotated[int, typer.Option(help="The stake pool the node claims.")] = 0,
    data_dir: RouterDir = None,
    ledger_url: LedgerUrl = None,
    key_file: KeyFile = None,
) -> None:
    """Stake a node's balance for a pool."""
    units = parse_cor(amount)

    async def go(ledger: Ledger) -> int:
        await ledger.stake(node, units, pool)
        return await ledger.staked(node)

    console.print(
        f"{node} staked: {format_cor(run_ledger(data_dir, ledger_url, go, key_file))} (pool {pool})"
    )


def unstake(
    node: Annotated[str, typer.Argument(help="The node's address.")],
    amount: Annotated[str, typer.Argument(help="COR to unstake (after the cooldown).")],
    data_dir: RouterDir = None,
    ledger_url: LedgerUrl = None,
    key_file: KeyFile = None,
) -> None:
    """Start the unstake cooldown (the stake can still be slashed until it ends)."""
    units = parse_cor(amount)
    when = run_ledger(data_dir, ledger_url, lambda lg: lg.request_unstake(node, units), key_file)
    console.print(f"{format_cor(units)} unstaking; available at {when.isoformat()}")


def balance(
    account: Annotated[str, typer.Argument(help="0x address.")],
    data_dir: RouterDir = None,
    ledger_url: LedgerUrl = None,
) -> None:
    """Show an account: balance, stake, unstaking, earned."""
    view: Any = run_ledger(data_dir, ledger_url, lambda lg: lg.account(account))
    table = Table("account", "balance", "staked", "unstaking", "earned", "pool")
    table.add_row(
        view.address,
        format_cor(view.balance),
        format_cor(view.staked),
        format_cor(view.unstaking.amount),
        format_cor(view.earned),
        str(view.pool if view.pool is not None else "-"),
    )
    console.print(table)


@ledger_app.command("verify")
def ledger_verify(
    data_dir: RouterDir = None,
    ledger_url: LedgerUrl = None,
    signer: Annotated[
        str | None,
        typer.Option(help="Address that signs the checkpoints; default: the router's key in the data dir."),
    ] = None,
) -> None:
    """Recompute the hash chain and every balance, and check them against the router's last signed checkpoint;
    name the first bad entry if history was edited."""
    folder = data_dir or default_data_dir() / "router"
    key_file = folder / "router.key"
    if signer is None and key_file.exists():
        signer = Identity.from_key(bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))).address

    async def go(ledger: Ledger) -> Any:
        return await ledger.verify(ledger.checkpoint_file(folder), signer), ledger.checkpoint_file(folder)

    report, path = run_ledger(data_dir, ledger_url, go)
    if report.ok:
        anchored = "" if "checkpoint" in report.reason else f" (no signed checkpoint in {path} yet)"
        console.print(
            f"[green]ledger ok[/]: {report.entries_checked} entries, chains and balances verified{anchored}; "
            f"{report.reason}"
        )
        return
    typer.secho(
        f"ledger TAMPERED: first bad entry {report.first_bad_entry}: {report.reason}", fg="red", err=True
    )
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(ledger_app, name="ledger")
    app.command()(deposit)
    app.command()(stake)
    app.command()(unstake)
    app.command()(balance)
