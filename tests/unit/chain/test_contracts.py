"""The contracts, one behaviour per test: what each call does, what it costs in gas, and the clear reason each
refusal reverts with. In process on eth-tester (py-evm); every transaction's gas is measured from its receipt."""

from __future__ import annotations

import hashlib

import pytest

from hivemesh.chain import artifacts
from hivemesh.errors import ChainReverted

from .conftest import COR, POOL_MIN, World


def b32(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def settlement(session: str, task: str, fee: int, payouts: list[tuple[str, int]]) -> tuple[object, ...]:
    return (b32(session), b32(task), fee, len(payouts))


def test_recompiling_the_shipped_sources_gives_the_shipped_bytecode() -> None:
    for name, built in artifacts.compile_all().items():
        shipped = artifacts.load(name)
        assert built.bytecode == shipped.bytecode, f"{name}: rebuild with python -m hivemesh.chain.artifacts"
        assert built.abi == shipped.abi
        assert built.source_sha256 == shipped.source_sha256


def test_stake_below_the_pool_minimum_reverts(world: World) -> None:
    np = world.chain.node_pool
    node = world.nodes[0]
    with pytest.raises(ChainReverted, match="stake: below the pool's minimum stake"):
        world.chain.transact(node, np.functions.stake(1), value=POOL_MIN - 1)
    with pytest.raises(ChainReverted, match="stake: unknown pool"):
        world.chain.transact(node, np.functions.stake(7), value=POOL_MIN)
    receipt = world.chain.transact(node, np.functions.stake(1), value=POOL_MIN)
    assert receipt["gasUsed"] < 100_000
    world.chain.transact(node, np.functions.register())
    assert world.chain.call(np.functions.stake_of(node.address)) == POOL_MIN
    assert world.chain.call(np.functions.registered(node.address))


def test_unstake_waits_for_the_cooldown_and_leaves_the_pool(world: World) -> None:
    np, node = world.chain.node_pool, world.nodes[0]
    world.chain.transact(node, np.functions.stake(1), value=POOL_MIN)
    world.chain.transact(node, np.functions.register())
    with pytest.raises(ChainReverted, match="unstake: amount exceeds the active stake"):
        world.chain.transact(node, np.functions.request_unstake(POOL_MIN + 1))
    world.chain.transact(node, np.functions.request_unstake(COR))
    assert not world.chain.call(np.functions.registered(node.address))  # below the minimum now
    with pytest.raises(ChainReverted, match="unstake: cooldown not over"):
        world.chain.transact(node, np.functions.complete_unstake())
    world.chain.w3.testing.timeTravel(world.chain.w3.eth.get_block("latest")["timestamp"] + 3601)  # type: ignore[attr-defined]
    before = world.chain.native_balance(node.address)
    receipt = world.chain.transact(node, np.functions.complete_unstake(), gas=80_000)
    gas_cost = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert world.chain.native_balance(node.address) == before + COR - gas_cost


def test_slash_by_a_stranger_reverts_and_a_validator_slash_pays_the_treasury(world: World) -> None:
    np, sp, node = world.chain.node_pool, world.chain.session_payment, world.nodes[0]
    world.chain.transact(node, np.functions.stake(1), value=POOL_MIN)
    world.chain.transact(node, np.functions.request_unstake(100 * COR))
    evidence = b32("fraud proof of task t1")
    with pytest.raises(ChainReverted, match="slash: caller is not a validator"):
        world.chain.transact(world.stranger, np.functions.slash(node.address, COR, 0, evidence))
    with pytest.raises(ChainReverted, match="slash: more than the node's stake in cooldown"):
        world.chain.transact(world.router, np.functions.slash(node.address, 0, 101 * COR, evidence))
    receipt = world.chain.transact(
        world.router, np.functions.slash(node.address, 90 * COR, 10 * COR, evidence)
    )
    (event,) = np.events.Slashed().process_receipt(receipt)
    assert event.args.evidence == evidence and event.args.by == world.router.address
    assert world.chain.call(np.functions.stake_of(node.address)) == 810 * COR
    assert world.chain.call(np.functions.unstaking_of(node.address)) == 90 * COR
    assert world.chain.call(sp.functions.balance_of(world.deployment.treasury)) == 100 * COR


def test_overdraw_reverts_everywhere(world: World) -> None:
    sp, user = world.chain.session_payment, world.user
    world.chain.transact(user, sp.functions.deposit(), value=10 * COR)
    with pytest.raises(ChainReverted, match="withdraw: amount exceeds the balance"):
        world.chain.transact(user, sp.functions.withdraw(10 * COR + 1))
    with pytest.raises(ChainReverted, match="fund: amount exceeds the owner's balance"):
        world.chain.transact(user, sp.functions.fund_session(b32("s1"), 11 * COR))
    world.chain.transact(user, sp.functions.fund_session(b32("s1"), 2 * COR))
    with pytest.raises(ChainReverted, match="settle: charge exceeds the session's escrow"):
        world.chain.transact(
            world.router,
            sp.functions.settle(settlement("s1", "t1", COR, [("n", 0)]), [(world.nodes[0].address, COR + 1)]),
        )
    with pytest.raises(ChainReverted, match="reserve: amount exceeds the session's escrow"):
        world.chain.transact(world.router, sp.functions.reserve(b32("s1"), b32("t1"), 3 * COR))


def test_settle_twice_reverts_and_a_stranger_cannot_settle(world: World) -> None:
    sp, user, n0 = world.chain.session_payment, world.user, world.nodes[0]
    world.chain.transact(user, sp.functions.deposit(), value=10 * COR)
    world.chain.transact(user, sp.functions.fund_session(b32("s1"), 5 * COR))
    args = (settlement("s1", "t1", COR // 10, [("n", 0)]), [(n0.address, COR)])
    with pytest.raises(ChainReverted, match="settle: caller is not the router"):
        world.chain.transact(world.stranger, sp.functions.settle(*args))
    world.chain.transact(world.router, sp.functions.settle(*args))
    with pytest.raises(ChainReverted, match="settle: task already settled"):
        world.chain.transact(world.router, sp.functions.settle(*args))
    assert world.chain.call(sp.functions.balance_of(n0.address)) == COR
    assert world.chain.call(sp.functions.escrow_of(b32("s1"))) == 5 * COR - COR - COR // 10


def test_a_reserved_hold_settles_and_releases_the_rest(world: World) -> None:
    sp, user, n0 = world.chain.session_payment, world.user, world.nodes[0]
    world.chain.transact(user, sp.functions.deposit(), value=10 * COR)
    world.chain.transact(user, sp.functions.fund_session(b32("s1"), 5 * COR))
    world.chain.transact(world.router, sp.functions.reserve(b32("s1"), b32("t1"), 2 * COR))
    with pytest.raises(ChainReverted, match="settle: charge exceeds the task's hold"):
        world.chain.transact(
            world.router, sp.functions.settle(settlement("s1", "t1", 0, [("n", 0)]), [(n0.address, 3 * COR)])
        )
    world.chain.transact(
        world.router, sp.functions.settle(settlement("s1", "t1", 0, [("n", 0)]), [(n0.address, COR)])
    )
    assert world.chain.call(sp.functions.escrow_of(b32("s1"))) == 4 * COR
    assert world.chain.call(sp.functions.held(b32("t1"))) == 0


def _batch(world: World, n: int, session: str = "s1") -> tuple[list[object], list[object]]:
    sets: list[object] = []
    pays: list[object] = []
    for i in range(n):
        sets.append(settlement(session, f"t{i}", COR // 100, [("g", 0), ("v", 0)]))
        pays += [(world.nodes[0].address, COR // 10), (world.nodes[1 + i % 2].address, COR // 20)]
    return sets, pays


def test_one_batch_settles_many_tasks_refunds_and_is_not_replayable(world: World) -> None:
    sp, user = world.chain.session_payment, world.user
    world.chain.transact(user, sp.functions.deposit(), value=100 * COR)
    sets, pays = _batch(world, 20)
    funds = [(b32("s1"), user.address, 50 * COR)]  # the router funds the user's session from its balance
    receipt = world.chain.transact(
        world.router, sp.functions.apply_batch(0, 41, funds, sets, pays, [], [b32("s1")], []), gas=3_000_000
    )
    per_task = receipt["gasUsed"] / 20
    assert per_task < 60_000, per_task
    charged = 20 * (COR // 10 + COR // 20 + COR // 100)
    assert world.chain.call(sp.functions.balance_of(world.nodes[0].address)) == 2 * COR
    assert world.chain.call(sp.functions.balance_of(world.deployment.treasury)) == 20 * (COR // 100)
    assert world.chain.call(sp.functions.balance_of(user.address)) == 100 * COR - charged  # refunded on close
    assert world.chain.call(sp.functions.journal_cursor()) == 41
    with pytest.raises(ChainReverted, match="batch: stale journal cursor"):
        world.chain.transact(world.router, sp.functions.apply_batch(0, 41, [], sets, pays, [], [], []))
    with pytest.raises(ChainReverted, match="fund: the session is closed"):
        world.chain.transact(world.router, sp.functions.apply_batch(41, 42, funds, [], [], [], [], []))


def test_a_batch_may_only_fund_an_owners_own_session(world: World) -> None:
    sp, user = world.chain.session_payment, world.user
    world.chain.transact(user, sp.functions.deposit(), value=10 * COR)
    world.chain.transact(world.stranger, sp.functions.deposit(), value=10 * COR)
    world.chain.transact(user, sp.functions.fund_session(b32("s1"), COR))
    with pytest.raises(ChainReverted, match="fund: the session belongs to another owner"):
        world.chain.transact(
            world.router,
            sp.functions.apply_batch(0, 1, [(b32("s1"), world.stranger.address, COR)], [], [], [], [], []),
        )


def test_a_batch_carries_slashes_and_rewards(world: World) -> None:
    sp, np, node = world.chain.session_payment, world.chain.node_pool, world.nodes[0]
    world.chain.transact(node, np.functions.stake(1), value=POOL_MIN)
    world.chain.transact(world.admin, sp.functions.fund_reward_pool(), value=COR)
    with pytest.raises(ChainReverted, match="reward: the reward pool is empty"):
        world.chain.transact(
            world.router, sp.functions.apply_batch(0, 1, [], [], [], [(node.address, 2 * COR)], [], [])
        )
    slash = (node.address, 100 * COR, 0, b32("evidence"))
    world.chain.transact(
        world.router, sp.functions.apply_batch(0, 2, [], [], [], [(node.address, COR)], [], [slash])
    )
    assert world.chain.call(sp.functions.balance_of(node.address)) == COR
    assert world.chain.call(np.functions.stake_of(node.address)) == 900 * COR
    assert world.chain.call(sp.functions.balance_of(world.deployment.treasury)) == 100 * COR


def test_checkpoint_anchor_takes_only_the_routers_newer_checkpoints(world: World) -> None:
    anchor = world.chain.checkpoint_anchor
    with pytest.raises(ChainReverted, match="anchor: caller is not a router"):
        world.chain.transact(world.stranger, anchor.functions.anchor(b32("heads"), 1))
    receipt = world.chain.transact(world.router, anchor.functions.anchor(b32("heads"), 5))
    assert receipt["gasUsed"] < 120_000
    with pytest.raises(ChainReverted, match="anchor: not newer than the latest checkpoint"):
        world.chain.transact(world.router, anchor.functions.anchor(b32("older"), 5))
    assert world.chain.call(anchor.functions.latest()) == b32("heads")
    assert world.chain.call(anchor.functions.count()) == 1
