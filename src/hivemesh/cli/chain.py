"""``hivemesh chain deploy`` and the chain side of ``hivemesh up --chain local``.

A router whose data dir holds ``chain.json`` (written by ``chain deploy``) keeps its ledger on that chain: the
``evm`` back-end (``hivemesh.ledger.evm``), with the router's own key signing its settlement batches.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount

from hivemesh.config import COR, BillingConfig, RouterConfig, default_data_dir
from hivemesh.identity import Identity
from hivemesh.ledger import Ledger, StakePools

CHAIN_FILE = "chain.json"
GAS_MONEY = 10 * COR  # native value each miner's key gets on a local chain, for its own transactions
ROUTER_FUNDS = 100_000 * COR  # the router's key: it pays the demo deposits and the miners' stakes in

chain_app = typer.Typer(
    help="The EVM chain: deploy the contracts a router's ledger runs on.", no_args_is_help=True
)


def account_of(identity: Identity) -> LocalAccount:
    account: LocalAccount = Account.from_key(identity.private_key)
    return account


async def open_ledger_for(config: RouterConfig, signers: list[Identity] | None = None) -> Ledger:
    """The router's ledger: on the chain named by ``<data dir>/chain.json`` when there is one, else SQL."""
    pools = StakePools(dict(config.billing.stake_pools))
    path = config.data_dir / CHAIN_FILE
    if not path.exists():
        return await Ledger.open(config.ledger_db_url, pools=pools)
    from hivemesh.chain.client import Deployment
    from hivemesh.ledger.evm import EvmLedger

    router = account_of(Identity.load_or_create(config.data_dir / "router.key"))
    return await EvmLedger.open_chain(
        config.ledger_db_url,
        Deployment.load(path),
        router,
        signers={i.address: account_of(i) for i in signers or []},
        pools=pools,
    )


def deploy_to(rpc: str, router_dir: Path, admin: LocalAccount, cooldown_s: int) -> Path:
    from hivemesh.chain.client import Chain
    from hivemesh.chain.deploy import deploy

    router = Identity.load_or_create(router_dir / "router.key")
    chain = Chain.connect(rpc)
    dep = deploy(
        chain,
        admin,
        rpc_url=rpc,
        router=router.address,
        pools=BillingConfig().stake_pools,
        cooldown_s=cooldown_s,
    )
    path = router_dir / CHAIN_FILE
    dep.save(path)
    return path


@chain_app.command("deploy")
def chain_deploy(
    rpc: Annotated[str, typer.Option("--rpc", help="The chain's JSON-RPC URL, e.g. http://127.0.0.1:8545")],
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="The router's data folder: chain.json is written there.")
    ] = None,
    admin_key_file: Annotated[
        Path | None, typer.Option(help="File holding the deployer's private key (hex); it pays the gas.")
    ] = None,
    dev: Annotated[bool, typer.Option(help="Deploy with anvil's well-known first dev account.")] = False,
    cooldown_s: Annotated[int, typer.Option(help="Unstake cooldown in seconds.")] = 7 * 24 * 3600,
) -> None:
    """Deploy NodePool, SessionPayment and CheckpointAnchor and point the router's ledger at them."""
    from hivemesh.chain.anvil import DEV_KEY
    from hivemesh.errors import HivemeshError

    if admin_key_file is None and not dev:
        raise typer.BadParameter("give --admin-key-file, or --dev on a local anvil chain")
    key = DEV_KEY if admin_key_file is None else admin_key_file.read_text().strip()
    router_dir = data_dir or default_data_dir() / "router"
    try:
        path = deploy_to(rpc, router_dir, Account.from_key(key), cooldown_s)
    except HivemeshError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"contracts deployed; the router's ledger now runs on the chain ({path})")


def start_local_chain(data_dir: Path, miners: list[Identity], others: list[Identity]) -> object:
    """``up --chain local``: anvil (its state kept in the data dir), the contracts deployed once, every local
    key given gas money; returns the running ``Anvil``."""
    from hivemesh.chain.anvil import DEV_KEY, Anvil, install_anvil
    from hivemesh.chain.client import Chain

    install_anvil()
    chain_dir = data_dir / "chain"
    chain_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    port_file = chain_dir / "port"
    port = int(port_file.read_text()) if port_file.exists() else None
    node = Anvil.start(
        port=port, state=chain_dir / "anvil-state.json", log_path=data_dir / "logs" / "anvil.log"
    )
    port_file.write_text(str(node.port))
    router_dir = data_dir / "router"
    admin = Account.from_key(DEV_KEY)
    chain = Chain.connect(node.url)
    if not (router_dir / CHAIN_FILE).exists() or chain.w3.eth.get_code(
        chain.w3.to_checksum_address(_deployed_pool(router_dir))
    ) in (b"", None):
        deploy_to(node.url, router_dir, admin, cooldown_s=60)
    wanted = [(m, GAS_MONEY) for m in miners] + [(o, ROUTER_FUNDS) for o in others]
    for ident, value in wanted:
        if chain.native_balance(ident.address) < value // 2:
            tx = {
                "to": ident.address,
                "value": value,
                "gas": 21_000,
                "gasPrice": chain.w3.eth.gas_price * 2,
                "nonce": chain.nonces.take(admin.address),
                "chainId": chain.w3.eth.chain_id,
            }
            chain.w3.eth.wait_for_transaction_receipt(
                chain.w3.eth.send_raw_transaction(admin.sign_transaction(tx).raw_transaction)
            )
    return node


def _deployed_pool(router_dir: Path) -> str:
    from hivemesh.chain.client import Deployment

    return Deployment.load(router_dir / CHAIN_FILE).node_pool


def prepare_chain_economy(data_dir: Path, miners: list[Identity]) -> None:
    """The demo economy on chain: the demo account funded, every miner staked with its own key."""
    from hivemesh.cli.demo import DEMO_FUNDS, MINER_POOL, REWARD_FUNDS

    async def go() -> None:
        cfg = RouterConfig(data_dir=data_dir / "router")
        ledger = await open_ledger_for(cfg, miners)
        try:
            demo = Identity.load_or_create(data_dir / "demo" / "account.key")
            if await ledger.balance(demo.address) == 0:
                await ledger.deposit(demo.address, DEMO_FUNDS)
            need = BillingConfig().stake_pools[MINER_POOL]
            for m in miners:
                short = need - await ledger.staked(m.address)
                if short > 0:
                    await ledger.deposit(m.address, short)
                    await ledger.stake(m.address, short, MINER_POOL)
            if await ledger.balance("reward_pool") == 0:
                await ledger.deposit("reward_pool", REWARD_FUNDS)
        finally:
            await ledger.close()

    asyncio.run(go())
