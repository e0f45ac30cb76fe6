"""Deploy and wire the three contracts: ``hivemesh chain deploy`` and ``hivemesh up --chain local`` call this.

NodePool (pools and their minimums, the unstake cooldown) -> SessionPayment (the router, the treasury, the node
pool) -> CheckpointAnchor (the router). The SessionPayment contract is a validator of the NodePool (a settlement
batch carries slashes) and receives slashed stake as the treasury's; the router is a validator too.
"""

from __future__ import annotations

from collections.abc import Mapping

from eth_account.signers.local import LocalAccount

from hivemesh.chain.client import Chain, Deployment


def deploy(
    chain: Chain,
    admin: LocalAccount,
    *,
    rpc_url: str,
    router: str,
    pools: Mapping[int, int],
    cooldown_s: int,
    treasury: str | None = None,
) -> Deployment:
    start = chain.block_number()
    treasury = treasury or admin.address
    node_pool, _ = chain.deploy(admin, "NodePool", cooldown_s)
    session_payment, _ = chain.deploy(admin, "SessionPayment", router, treasury, node_pool)
    anchor, _ = chain.deploy(admin, "CheckpointAnchor", router)
    np = chain.contract("NodePool", node_pool)
    chain.transact(admin, np.functions.set_treasury(session_payment))
    chain.transact(admin, np.functions.set_validator(session_payment, True))
    chain.transact(admin, np.functions.set_validator(router, True))
    for pool, minimum in sorted(pools.items()):
        chain.transact(admin, np.functions.set_pool(pool, minimum))
    deployment = Deployment(
        rpc_url=rpc_url,
        chain_id=int(chain.w3.eth.chain_id),
        node_pool=node_pool,
        session_payment=session_payment,
        checkpoint_anchor=anchor,
        treasury=treasury,
        start_block=start,
    )
    chain.deployment = deployment
    return deployment
