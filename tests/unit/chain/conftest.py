"""The contracts in process: web3's eth-tester on py-evm, deployed fresh for each test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import EthereumTesterProvider, Web3

from hivemesh.chain.client import Chain, Deployment, Nonces
from hivemesh.chain.deploy import deploy

COR = 10**18
POOL_MIN = 1_000 * COR


@dataclass
class World:
    chain: Chain
    deployment: Deployment
    admin: LocalAccount
    router: LocalAccount
    user: LocalAccount
    nodes: list[LocalAccount]
    stranger: LocalAccount


def _funded(w3: Web3, n: int) -> list[LocalAccount]:
    accounts = [Account.create() for _ in range(n)]
    rich = w3.eth.accounts[0]
    for a in accounts:
        w3.eth.send_transaction({"from": rich, "to": a.address, "value": 100_000 * COR})
    return accounts


@pytest.fixture(scope="module")
def deployed() -> World:
    w3 = Web3(EthereumTesterProvider())
    admin, router, user, n1, n2, n3, stranger = _funded(w3, 7)
    chain = Chain(w3)
    dep = deploy(
        chain, admin, rpc_url="eth-tester", router=router.address, pools={0: 0, 1: POOL_MIN}, cooldown_s=3600
    )
    return World(chain, dep, admin, router, user, [n1, n2, n3], stranger)


@pytest.fixture
def world(deployed: World) -> Iterator[World]:
    """The deployed contracts, each test from the same fresh state (an EVM snapshot, reverted after)."""
    testing = deployed.chain.w3.testing  # type: ignore[attr-defined]
    snapshot = testing.snapshot()
    deployed.chain.nonces = Nonces(deployed.chain.w3)
    try:
        yield deployed
    finally:
        testing.revert(snapshot)
