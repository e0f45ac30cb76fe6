"""A web3 connection to the hivemesh contracts, with local signing (eth-account) and explicit gas.

Blocking (web3's HTTP provider): async callers run it in a thread. Every failure becomes one of the ledger's
errors: ``ChainReverted`` carrying the contract's reason, or ``ChainUnavailable`` when the RPC did not answer.

    chain = Chain.connect("http://127.0.0.1:8545", deployment)
    chain.transact(router_account, chain.session_payment.functions.deposit_for(user), value=10**18)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError
from web3.types import TxReceipt

from hivemesh.chain.artifacts import load
from hivemesh.errors import ChainReverted, ChainUnavailable, LedgerError

log = logging.getLogger(__name__)
NONCE_RETRIES = 5  # sends of one transaction whose nonce another signer of the same key took meanwhile
GAS_MARGIN = (
    1.25  # estimates are exact for the state they ran on; a batch may land on a slightly different one
)


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live, as ``hivemesh chain deploy`` writes it (``chain.json`` in the router's dir)."""

    rpc_url: str
    chain_id: int
    node_pool: str
    session_payment: str
    checkpoint_anchor: str
    treasury: str  # the SessionPayment balance that holds fees and slashed stake
    start_block: int = 0  # the block the contracts were deployed in: event sync starts there

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise LedgerError(f"cannot read the chain deployment {path}: {exc}") from None


def revert_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc)
    for prefix in ("execution reverted: ", "execution reverted"):
        if prefix in text:
            text = text.split(prefix, 1)[1] or "reverted without a reason"
            break
    return text.strip("'\" ") or "reverted without a reason"


def nonce_conflict(exc: BaseException) -> bool:
    """The node refused a transaction for its nonce (used, or pending with another transaction), not its effect."""
    text = str(exc).lower()
    return any(s in text for s in ("nonce too low", "nonce too high", "replacement transaction underpriced"))


@contextmanager
def chain_errors(what: str) -> Iterator[None]:
    """Turn web3/transport failures into ``ChainReverted`` / ``ChainUnavailable``."""
    try:
        yield
    except ContractLogicError as exc:
        raise ChainReverted(f"{what} reverted: {revert_reason(exc)}") from None
    except (requests.ConnectionError, requests.Timeout, TimeExhausted, ConnectionError, TimeoutError) as exc:
        raise ChainUnavailable(f"{what}: the chain did not answer ({type(exc).__name__})") from None
    except Web3RPCError as exc:
        raise ChainReverted(f"{what} refused: {revert_reason(exc)}") from None
    except Web3Exception as exc:
        raise ChainUnavailable(f"{what}: {exc}") from None
    except Exception as exc:  # an in-process test chain (eth-tester) raises its own TransactionFailed
        if "execution reverted" in str(exc):
            raise ChainReverted(f"{what} reverted: {revert_reason(exc)}") from None
        raise


class Nonces:
    """The next nonce of each signing account, kept here so a burst of transactions never reuses one; resynced
    from the chain's pending count after any failure (a replaced, dropped or foreign transaction)."""

    def __init__(self, w3: Web3) -> None:
        self._w3 = w3
        self._next: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, address: str) -> int:
        with self._lock:
            if address not in self._next:
                self._next[address] = self._w3.eth.get_transaction_count(address, "pending")  # type: ignore[arg-type]
            n = self._next[address]
            self._next[address] = n + 1
            return n

    def forget(self, address: str) -> None:
        with self._lock:
            self._next.pop(address, None)


class Chain:
    def __init__(self, w3: Web3, deployment: Deployment | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.nonces = Nonces(w3)

    @classmethod
    def connect(cls, rpc_url: str, deployment: Deployment | None = None, *, timeout: float = 10.0) -> Chain:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        return cls(w3, deployment)

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=load(name).abi)

    def _deployed(self) -> Deployment:
        if self.deployment is None:
            raise LedgerError("no contracts deployed: run hivemesh chain deploy --rpc URL")
        return self.deployment

    @property
    def node_pool(self) -> Contract:
        return self.contract("NodePool", self._deployed().node_pool)

    @property
    def session_payment(self) -> Contract:
        return self.contract("SessionPayment", self._deployed().session_payment)

    @property
    def checkpoint_anchor(self) -> Contract:
        return self.contract("CheckpointAnchor", self._deployed().checkpoint_anchor)

    def block_number(self) -> int:
        with chain_errors("eth_blockNumber"):
            return int(self.w3.eth.block_number)

    def native_balance(self, address: str) -> int:
        with chain_errors("eth_getBalance"):
            return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def call(self, fn: ContractFunction) -> Any:
        with chain_errors(fn.fn_name):
            return fn.call()

    def deploy(self, account: LocalAccount, name: str, *args: Any) -> tuple[str, TxReceipt]:
        art = load(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        receipt = self._send(account, factory.constructor(*args), 0, None, f"deploy {name}", 120.0)
        address = receipt["contractAddress"]
        assert address is not None
        return str(address), receipt

    def transact(
        self,
        account: LocalAccount,
        fn: ContractFunction,
        *,
        value: int = 0,
        gas: int | None = None,
        timeout: float = 60.0,
    ) -> TxReceipt:
        """Sign and send one call, wait for its receipt; raise ``ChainReverted`` with the reason if it fails."""
        return self._send(account, fn, value, gas, fn.fn_name, timeout)

    def _sign_and_send(self, account: LocalAccount, tx: dict[str, Any]) -> Any:
        """Sign ``tx`` with the account's next nonce and send it. A nonce that someone else used meanwhile (the
        same key signing in another process: ``hivemesh deposit`` beside a running router) is not a revert: the
        nonce is resynced from the chain and the transaction signed again."""
        for attempt in range(NONCE_RETRIES):
            tx["nonce"] = self.nonces.take(account.address)
            try:
                return self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
            except Web3RPCError as exc:
                if attempt == NONCE_RETRIES - 1 or not nonce_conflict(exc):
                    raise
                log.info("nonce taken elsewhere, resyncing account=%s nonce=%d", account.address, tx["nonce"])
                self.nonces.forget(account.address)
        raise AssertionError("unreachable")

    def _send(
        self, account: LocalAccount, fn: Any, value: int, gas: int | None, what: str, timeout: float
    ) -> TxReceipt:
        sender = account.address
        with chain_errors(what):
            tx: dict[str, Any] = {"from": sender, "value": value, "chainId": self.w3.eth.chain_id}
            if gas is None:
                gas = int(fn.estimate_gas(tx) * GAS_MARGIN) + 10_000  # reverts here carry their reason
            tx = fn.build_transaction({**tx, "gas": gas, "nonce": 0})
        try:
            with chain_errors(what):
                tx_hash = self._sign_and_send(account, tx)
                receipt = self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=timeout, poll_latency=0.05
                )
        except LedgerError:
            self.nonces.forget(sender)
            raise
        if receipt["status"] != 1:
            reason = "out of gas or reverted"
            try:  # replay it where it ran for the reason
                self.w3.eth.call({k: v for k, v in tx.items() if k != "nonce"}, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
            except ContractLogicError as exc:
                reason = revert_reason(exc)
            except Web3Exception:
                pass
            raise ChainReverted(f"{what} reverted in block {receipt['blockNumber']}: {reason}")
        return receipt
