"""A real anvil on loopback and an ``EvmLedger`` on freshly deployed contracts, for the evm back-end's tests.

anvil comes from npm into hivemesh's cache dir (``scripts/setup`` installs it; the fixture installs it if it is
missing); the tests skip, saying why, only where npm itself is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from hivemesh.chain.anvil import DEV_KEY, Anvil, find_anvil, install_anvil
from hivemesh.chain.client import Chain, Deployment
from hivemesh.chain.deploy import deploy
from hivemesh.ledger import COR, Ledger, StakePools
from hivemesh.ledger.evm import EvmLedger
from hivemesh.ledger.evm_journal import ref32

POOLS = {0: 0, 1: 1_000 * COR}


def require_anvil() -> None:
    """Install anvil from npm if it is missing; skip the test, saying why, where that is impossible."""
    if find_anvil() is None:
        if shutil.which("npm") is None:
            pytest.skip("anvil is not installed and npm is absent: install Node.js to run the chain tests")
        try:
            install_anvil()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"anvil could not be installed with npm: {exc}")


@pytest.fixture(scope="module")
def anvil_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    require_anvil()
    node = Anvil.start(log_path=tmp_path_factory.mktemp("anvil") / "anvil.log")
    try:
        yield node
    finally:
        node.stop()


def fresh_deployment(node: Anvil, cooldown_s: int = 0) -> tuple[Deployment, LocalAccount]:
    """New contracts (on the same anvil) and a fresh router key funded from anvil's dev account."""
    admin = Account.from_key(DEV_KEY)
    router = Account.create()
    chain = Chain.connect(node.url)
    chain.w3.eth.wait_for_transaction_receipt(
        chain.w3.eth.send_raw_transaction(
            admin.sign_transaction(
                {
                    "to": router.address,
                    "value": 100_000 * COR,  # the dev account holds 10M: ~100 deployments per anvil
                    "gas": 21_000,
                    "gasPrice": chain.w3.eth.gas_price * 2,
                    "nonce": chain.w3.eth.get_transaction_count(admin.address, "pending"),
                    "chainId": chain.w3.eth.chain_id,
                }
            ).raw_transaction
        )
    )
    dep = deploy(chain, admin, rpc_url=node.url, router=router.address, pools=POOLS, cooldown_s=cooldown_s)
    return dep, router


def fund(node: Anvil, accounts: Sequence[LocalAccount], amount: int = 100_000 * COR) -> None:
    chain = Chain.connect(node.url)
    admin = Account.from_key(DEV_KEY)
    for a in accounts:
        nonce = chain.nonces.take(admin.address)
        tx = {
            "to": a.address,
            "value": amount,
            "gas": 21_000,
            "gasPrice": chain.w3.eth.gas_price * 2,
            "nonce": nonce,
            "chainId": chain.w3.eth.chain_id,
        }
        chain.w3.eth.wait_for_transaction_receipt(
            chain.w3.eth.send_raw_transaction(admin.sign_transaction(tx).raw_transaction)
        )


async def open_evm(
    path: Path,
    dep: Deployment,
    router: LocalAccount,
    signers: Sequence[LocalAccount] = (),
    **kw: object,
) -> EvmLedger:
    return await EvmLedger.open_chain(
        f"sqlite+aiosqlite:///{path}",
        dep,
        router,
        signers={a.address: a for a in signers},
        pools=StakePools(POOLS),
        **kw,  # type: ignore[arg-type]
    )


async def chain_matches_book(ledger: EvmLedger, accounts: Sequence[str], sessions: Sequence[str]) -> None:
    """After a flush, every balance, escrow (with its reserved holds), reward pool and stake on chain equals
    the local book's."""
    await ledger.flush()
    chain = ledger.link.chain
    sp, np = chain.session_payment.functions, chain.node_pool.functions
    for a in accounts:
        assert chain.call(sp.balance_of(a)) == await ledger.balance(a), a
        assert chain.call(np.stake_of(a)) == await ledger.staked(a), a
        unstaking = (await ledger.account(a)).unstaking.amount
        assert chain.call(np.unstaking_of(a)) == unstaking, a
    assert chain.call(sp.balance_of(ledger.link.deployment.treasury)) == await ledger.balance("treasury")
    assert chain.call(sp.reward_pool()) == await ledger.balance("reward_pool")
    held = {}
    for h in await ledger.held():
        held[h.session_id] = held.get(h.session_id, 0) + h.amount
    for s in sessions:
        assert chain.call(sp.escrow_of(ref32(s))) == await ledger.escrow_balance(s) + held.get(s, 0), s


__all__ = [
    "Ledger",
    "anvil_node",
    "chain_matches_book",
    "fresh_deployment",
    "fund",
    "open_evm",
    "require_anvil",
]
