"""The CLI against a real anvil: ``hivemesh chain deploy`` points a router's ledger at fresh contracts, and
``deposit``, ``stake``, ``unstake`` and ``balance`` then work on the chain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from eth_account import Account

from hivemesh.chain.anvil import Anvil
from hivemesh.chain.client import Chain, Deployment
from hivemesh.identity import Identity
from hivemesh.ledger import COR

from .evm_helpers import anvil_node, fund

__all__ = ["anvil_node"]


def hivemesh(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hivemesh.cli.main", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_deploy_then_money_commands_run_on_the_chain(anvil_node: Anvil, tmp_path: Path) -> None:
    router_dir = tmp_path / "router"
    out = hivemesh("chain", "deploy", "--rpc", anvil_node.url, "--data-dir", str(router_dir), "--dev")
    assert "contracts deployed" in out
    dep = Deployment.load(router_dir / "chain.json")
    router = Identity.load_or_create(router_dir / "router.key")
    node = Identity.load_or_create(tmp_path / "node.key")
    fund(anvil_node, [Account.from_key(router.private_key), Account.from_key(node.private_key)], 10_000 * COR)
    user = Account.create().address
    common = ["--data-dir", str(router_dir)]
    assert "5 COR" in hivemesh("deposit", user, "5", *common)
    hivemesh("deposit", node.address, "1000", *common)
    assert "1000 COR" in hivemesh(
        "stake", node.address, "1000", "--pool", "1", "--key-file", str(tmp_path / "node.key"), *common
    )
    assert "unstaking" in hivemesh(
        "unstake", node.address, "10", "--key-file", str(tmp_path / "node.key"), *common
    )
    chain = Chain.connect(anvil_node.url, dep)
    np, sp = chain.node_pool.functions, chain.session_payment.functions
    assert chain.call(np.stake_of(node.address)) == 990 * COR
    assert chain.call(np.unstaking_of(node.address)) == 10 * COR
    assert chain.call(sp.balance_of(user)) == 5 * COR
    shown = hivemesh("balance", node.address, *common)
    assert "990 COR" in shown and "10 COR" in shown


def test_a_router_on_a_chain_refuses_a_postgresql_ledger_in_one_sentence(tmp_path: Path) -> None:
    """The evm back-end's journal must commit in id order, which only its SQLite book does."""
    Deployment("http://127.0.0.1:1", 31337, *(4 * [Account.create().address])).save(tmp_path / "chain.json")
    pg = "postgresql+asyncpg://hm:secret@127.0.0.1:1/ledger"
    args = ["router", "--data-dir", str(tmp_path), "--port", "0", "--no-semantic", "--ledger-url", pg]
    done = subprocess.run(
        [sys.executable, "-m", "hivemesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "error: the evm ledger back-end keeps its book in SQLite, not postgresql+asyncpg" in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
