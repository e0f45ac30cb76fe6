"""The demo economy ``hivemesh up`` sets up, so a new user sees payments flow with no set-up of their own.

A demo account funded with ``DEMO_FUNDS`` and an API key bound to it (the key the user is given), an admin key
(the router's static key, for the admin endpoints), every miner staked for pool ``MINER_POOL``, and a funded reward
pool. Idempotent: a second ``up`` on the same data dir tops up nothing that is already there.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from hivemesh.config import COR, BillingConfig
from hivemesh.errors import AuthenticationFailed
from hivemesh.identity import Identity
from hivemesh.ledger import REWARD_POOL, Ledger, StakePools
from hivemesh.router.auth import key_hash

DEMO_FUNDS = 1_000 * COR
MINER_POOL = 1
REWARD_FUNDS = 100 * COR


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def ensure_admin_key(data_dir: Path) -> str:
    """The router's static admin key: kept in ``<data>/admin_key``, its hash in ``router/api_keys.txt``."""
    path = data_dir / "admin_key"
    if path.exists():
        key = path.read_text().strip()
    else:
        key = "hm-admin-" + secrets.token_urlsafe(30)
        _write_secret(path, key)
    append_once(data_dir / "router" / "api_keys.txt", key_hash(key))
    return key


def append_once(path: Path, entry: str) -> None:
    """Add ``entry`` as a line of ``path`` unless it is there already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry not in (path.read_text().split() if path.exists() else []):
        with path.open("a") as f:
            f.write(entry + "\n")


def miner_dir(data_dir: Path, i: int) -> Path:
    return data_dir / "miners" / f"miner-{i}"


async def _prepare(data_dir: Path, miners: int) -> str:
    pools = BillingConfig().stake_pools
    ledger = await Ledger.open(
        f"sqlite+aiosqlite:///{data_dir / 'router' / 'ledger.db'}", pools=StakePools(dict(pools))
    )
    try:
        demo = Identity.load_or_create(data_dir / "demo" / "account.key")
        if (await ledger.account(demo.address)).balance == 0:
            await ledger.deposit(demo.address, DEMO_FUNDS, reason="hivemesh up: demo account")
        key_file = data_dir / "api_key"
        key = key_file.read_text().strip() if key_file.exists() else ""
        try:
            if not key:
                raise AuthenticationFailed("no key yet")
            await ledger.authenticate(key)
        except AuthenticationFailed:
            _, key = await ledger.create_key(demo.address, name="hivemesh up demo")
            _write_secret(key_file, key)
        need = pools[MINER_POOL]
        for i in range(miners):
            node = Identity.load_or_create(miner_dir(data_dir, i) / "node.key").address
            short = need - await ledger.staked(node)
            if short > 0:
                await ledger.deposit(node, short, reason="hivemesh up: miner stake")
                await ledger.stake(node, short, MINER_POOL)
        if await ledger.balance(REWARD_POOL) == 0:
            await ledger.deposit(REWARD_POOL, REWARD_FUNDS, reason="hivemesh up: reward pool")
        return key
    finally:
        await ledger.close()


def prepare_economy(data_dir: Path, miners: int) -> str:
    """Set up (or find) the demo economy; returns the user's API key."""
    (data_dir / "router").mkdir(parents=True, exist_ok=True)
    ensure_admin_key(data_dir)
    return asyncio.run(_prepare(data_dir, miners))
