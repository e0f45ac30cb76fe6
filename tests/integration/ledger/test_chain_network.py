"""A whole network on a chain, end to end, as a user meets it: ``hivemesh up --chain local`` (anvil, the contracts,
the demo account and the miners' stakes on chain), a new user's money deposited with ``hivemesh deposit`` while the
router runs, a key bound to that account, one billed chat completion through the official ``openai`` SDK, and the
money followed from the router's local book to the chain: the user's balance debited, the session's escrow, the
miners' payouts withdrawable and the treasury's fee, equal on both and adding up to the deposit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account
from sqlalchemy import select

from hivemesh.chain.client import Chain, Deployment
from hivemesh.engines.instant import WORDS
from hivemesh.identity import Identity
from hivemesh.ledger import COR, TREASURY, Ledger
from hivemesh.ledger.evm_journal import ref32
from hivemesh.ledger.schema import holds

from ..test_up import _read_exports
from .evm_helpers import require_anvil

MODEL = "instant-echo"
DEPOSIT = 5 * COR


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """``hivemesh up --chain local`` with two instant miners (token mode: a generator and a verifier)."""
    require_anvil()
    up = ["up", "--chain", "local", "--engine", "instant", "--miners", "2", "--port", "0", "--no-semantic"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemesh.cli.main", *up, "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        yield _read_exports(proc, timeout=90), tmp_path
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()
        assert code == 0, (tmp_path / "logs" / "router.log").read_text()[-3000:]


def hivemesh(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hivemesh.cli.main", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def wait_for(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within} s")
        time.sleep(0.1)
    return found


def book(router_dir: Path, accounts: list[str], task_id: str | None = None) -> dict[str, Any]:
    """The router's local book, read beside it: the accounts' and the treasury's balances and, for a task, its
    hold's state and its session's escrow."""

    async def go() -> dict[str, Any]:
        ledger = await Ledger.open(f"sqlite+aiosqlite:///{router_dir / 'ledger.db'}")
        try:
            out: dict[str, Any] = {a: await ledger.balance(a) for a in [*accounts, TREASURY]}
            if task_id is not None:
                async with ledger._db.read() as conn:
                    query = select(holds.c.session_id, holds.c.state).where(holds.c.task_id == task_id)
                    row = (await conn.execute(query)).one()
                out |= {"settled": row.state == "settled", "session": row.session_id}
                out["escrow"] = await ledger.escrow_balance(row.session_id)
            return out
        finally:
            await ledger.close()

    return asyncio.run(go())


def test_a_billed_chat_completion_on_a_chain_network_is_settled_on_chain(
    network: tuple[dict[str, str], Path],
) -> None:
    exports, data = network
    base = exports["OPENAI_BASE_URL"].removesuffix("/v1")
    router_dir = data / "router"
    dep = Deployment.load(router_dir / "chain.json")
    chain = Chain.connect(dep.rpc_url, dep)
    sp = chain.session_payment.functions

    # the quick start's demo key works on the chain too; its batch makes the router's key send a transaction
    demo = openai.OpenAI(
        base_url=exports["OPENAI_BASE_URL"], api_key=exports["OPENAI_API_KEY"], max_retries=0
    )
    demo.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=16)
    wait_for(lambda: chain.call(sp.journal_cursor()) > 0, 15, "the demo task's batch on chain")

    # a new user's money arrives on chain through the CLI, in its own process, while the router runs
    user = Account.create().address
    assert "5 COR" in hivemesh("deposit", user, "5", "--data-dir", str(router_dir))
    assert chain.call(sp.balance_of(user)) == DEPOSIT
    admin = {"authorization": f"Bearer {(data / 'admin_key').read_text().strip()}"}
    with httpx.Client(base_url=base + "/api/v1", headers=admin, timeout=10) as api:
        r = api.post("/admin/keys", json={"account": user, "name": "e2e"})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        # the router's follower mirrored the deposit another process made
        assert api.get(f"/accounts/{user}").json()["balance"] == str(DEPOSIT)

    keys = [Identity.load_or_create(p) for p in sorted((data / "miners").glob("miner-*/node.key"))]
    earned_before = book(router_dir, [k.address for k in keys])  # the demo task's payouts and fee
    client = openai.OpenAI(base_url=exports["OPENAI_BASE_URL"], api_key=secret, max_retries=0, timeout=30)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Pay the miners."}], max_tokens=16
    )
    words = (answer.choices[0].message.content or "").split()
    assert len(words) == 8 and set(words) <= set(WORDS) and answer.choices[0].finish_reason == "stop"
    block = (answer.model_extra or {})["hivemesh"]
    assert block["mode"] == "token" and block["verdict"] == "verified"
    miners = [block["generator"], *block["verifiers"]]
    assert len(set(miners)) == 2

    # the local book: the task settled (in the background), the user charged, the miners and the treasury paid
    wait_for(lambda: book(router_dir, [], block["task_id"])["settled"], 10, "the settlement in the book")
    local = book(router_dir, [user, *miners], block["task_id"])
    paid = {a: local[a] - earned_before[a] for a in [*miners, TREASURY]}
    assert 0 < local[user] < DEPOSIT and all(v > 0 for v in paid.values())
    assert local[user] + local["escrow"] + sum(paid.values()) == DEPOSIT  # nothing made or lost

    # the chain, after the batch interval: every figure equal to the book's
    def on_chain() -> dict[str, int]:
        got = {a: int(chain.call(sp.balance_of(a))) for a in [user, *miners]}
        got[TREASURY] = int(chain.call(sp.balance_of(dep.treasury)))
        got["escrow"] = int(chain.call(sp.escrow_of(ref32(local["session"]))))
        return got

    expected = {k: v for k, v in local.items() if k not in ("settled", "session")}
    wait_for(lambda: on_chain() == expected, 15, "the chain agreeing with the book")
    # the miners' payouts are theirs to withdraw: the generator's key takes its balance out of the contract
    generator = next(Account.from_key(k.private_key) for k in keys if k.address == block["generator"])
    before = chain.native_balance(generator.address)
    chain.transact(generator, sp.withdraw(local[generator.address]))
    assert chain.call(sp.balance_of(generator.address)) == 0
    assert chain.native_balance(generator.address) > before
    with httpx.Client(base_url=base + "/api/v1", headers=admin, timeout=10) as api:
        wait_for(
            lambda: api.get(f"/accounts/{generator.address}").json()["balance"] == "0",
            5,
            "the router mirroring the miner's withdrawal",
        )
    # the deposit signed beside the router took a nonce the router's sender held: resynced, never a revert
    assert "reverted" not in (data / "logs" / "router.log").read_text()
