"""Property: any mix of ledger calls, run concurrently, keeps money conserved, non-negative and verifiable."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemesh.errors import HivemeshError, LedgerError, LedgerIntegrityError, NotFound
from hivemesh.ledger import COR, REWARD_POOL, TREASURY, Ledger

from .ledger_helpers import addr

USERS = [addr(i) for i in range(3)]
MINERS = [addr(100 + i) for i in range(2)]
SESSIONS = {"s0": USERS[0], "s1": USERS[1]}
TASKS = [f"t{i}" for i in range(6)]
EXPECTED = (LedgerError, NotFound)  # refusals are fine; anything else is a bug

amounts = st.integers(min_value=1, max_value=5 * COR) | st.sampled_from([1, COR, 10**30])
Op = tuple[Any, ...]
ops: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("deposit"), st.sampled_from(USERS + MINERS), amounts),
    st.tuples(st.just("withdraw"), st.sampled_from(USERS + MINERS), amounts),
    st.tuples(st.just("fund"), st.sampled_from(sorted(SESSIONS)), amounts),
    st.tuples(st.just("reserve"), st.sampled_from(sorted(SESSIONS)), st.sampled_from(TASKS), amounts),
    st.tuples(
        st.just("settle"),
        st.sampled_from(TASKS),
        st.dictionaries(st.sampled_from(MINERS), st.integers(0, 2 * COR), max_size=2),
        st.integers(0, COR // 10),
    ),
    st.tuples(st.just("release"), st.sampled_from(TASKS)),
    st.tuples(st.just("stake"), st.sampled_from(MINERS), amounts),
    st.tuples(st.just("unstake"), st.sampled_from(MINERS), amounts),
    st.tuples(st.just("slash"), st.sampled_from(MINERS), st.sampled_from([0.1, 0.5, 1.0])),
    st.tuples(st.just("reward"), st.sampled_from(MINERS), amounts, st.integers(0, 2)),
    st.tuples(st.just("close"), st.sampled_from(sorted(SESSIONS))),
)


def call(ledger: Ledger, op: Op) -> Callable[[], Awaitable[Any]]:
    name, *args = op
    table: dict[str, Callable[..., Awaitable[Any]]] = {
        "deposit": ledger.deposit,
        "withdraw": ledger.withdraw,
        "fund": lambda s, a: ledger.fund_session(s, SESSIONS[s], a),
        "reserve": ledger.reserve,
        "settle": ledger.settle,
        "release": ledger.release,
        "stake": lambda m, a: ledger.stake(m, a, pool=0),
        "unstake": ledger.request_unstake,
        "slash": lambda m, f: ledger.slash(m, f, "property test"),
        "reward": lambda m, a, e: ledger.reward(m, a, e),
        "close": lambda s: ledger.close_session(s, SESSIONS[s]),
        "reward_pool": lambda _, a: ledger.deposit(REWARD_POOL, a, reason="emission"),
    }
    return lambda: table[name](*args)


def every_account() -> list[str]:
    names = [*USERS, *MINERS, TREASURY, REWARD_POOL]
    names += [f"{p}:{m}" for m in MINERS for p in ("stake", "unstaking")]
    names += [f"escrow:{s}" for s in SESSIONS] + [f"hold:{t}" for t in TASKS]
    return names


async def check_invariants(ledger: Ledger, setup: list[Op], program: list[Op]) -> None:
    for op in setup:
        await call(ledger, op)()
    results = await asyncio.gather(*(call(ledger, op)() for op in program), return_exceptions=True)
    for op, result in zip(program, results, strict=True):
        if isinstance(result, BaseException) and (
            not isinstance(result, EXPECTED) or isinstance(result, LedgerIntegrityError)
        ):
            raise AssertionError(f"{op} raised {result!r}") from result
    done = [op for op, r in zip(program, results, strict=True) if not isinstance(r, HivemeshError)]
    deposited = sum(op[2] for op in setup + done if op[0] == "deposit")
    deposited += sum(op[2] for op in setup if op[0] == "reward_pool")
    withdrawn = sum(op[2] for op in done if op[0] == "withdraw")

    balances = {a: await ledger.balance(a) for a in every_account()}
    assert all(b >= 0 for b in balances.values()), balances
    assert await ledger.totals() == sum(balances.values()) == deposited - withdrawn
    for task in TASKS:  # a hold is all or nothing: reserved and untouched, or emptied
        assert balances[f"hold:{task}"] in (
            0,
            *(op[3] for op in done if op[0] == "reserve" and op[2] == task),
        )
    report = await ledger.verify()
    assert report.ok, report.reason


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(ops, min_size=1, max_size=30), shards=st.sampled_from([1, 3]))
def test_concurrent_programs_conserve_money(program: list[Op], shards: int) -> None:
    setup: list[Op] = [("deposit", u, 20 * COR) for u in USERS + MINERS]
    setup += [("fund", s, 5 * COR) for s in SESSIONS]
    setup += [("reward_pool", REWARD_POOL, 3 * COR)]

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = await Ledger.open(f"sqlite+aiosqlite:///{Path(tmp) / 'l.db'}", chain_shards=shards)
            try:
                await check_invariants(ledger, setup, program)
            finally:
                await ledger.close()

    asyncio.run(run())
