"""The evm ledger back-end on a real anvil: batching throughput, gas per settled task, the billed path's latency
against SQLite, and a 30-second chain outage under load.

    python -m bench.chain [--tasks 1000] [--outage-s 30] [--json FILE]

(a) settlements/s: N billed tasks (reserve + settle, 2 payouts + fee each) written concurrently to an
    ``EvmLedger`` (batch size 100, interval 0.2 s); the clock runs from the first settlement until the chain's
    journal cursor has caught up with the last.
(b) gas per settled task: ``apply_batch`` with 1, 10 and 100 settlements sent straight to the contract.
(c) latency of the billed money path (one reserve + one settle, sequential) on the evm back-end vs plain SQLite:
    the hot path writes the local book only, so they should match.
(d) outage: a steady billed load; anvil frozen (SIGSTOP) for ``--outage-s`` seconds in the middle, then resumed.
    Counts billed tasks, hot-path latency during the outage, time to drain, and whether the chain agrees with the
    book afterwards (nothing lost, nothing doubled, nothing left out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from hivemesh.chain.anvil import DEV_KEY, Anvil, install_anvil
from hivemesh.chain.client import Chain, Deployment
from hivemesh.chain.deploy import deploy
from hivemesh.ledger import COR, Ledger, StakePools
from hivemesh.ledger.evm import EvmLedger
from hivemesh.ledger.evm_journal import ref32

console = Console()
POOLS = {0: 0, 1: 1_000 * COR}
ROUTER = Account.from_key(DEV_KEY)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def fresh(node: Anvil) -> Deployment:
    chain = Chain.connect(node.url)
    return deploy(chain, ROUTER, rpc_url=node.url, router=ROUTER.address, pools=POOLS, cooldown_s=0)


async def open_evm(dep: Deployment, path: Path, **kw: Any) -> EvmLedger:
    return await EvmLedger.open_chain(
        f"sqlite+aiosqlite:///{path}", dep, ROUTER, pools=StakePools(POOLS), **kw
    )


async def bill(ledger: Ledger, session: str, user: str, task: str, miners: tuple[str, str]) -> float:
    t0 = time.perf_counter()
    await ledger.reserve(session, task, COR // 10, top_up_from=user)
    await ledger.settle(task, {miners[0]: COR // 20, miners[1]: COR // 50}, treasury_fee=COR // 100)
    return time.perf_counter() - t0


async def throughput(node: Anvil, tmp: Path, n: int) -> dict[str, float]:
    dep = fresh(node)
    user, m0, m1 = (Account.create().address for _ in range(3))
    ledger = await open_evm(dep, tmp / "a.db", batch_size=100, batch_interval_s=0.2)
    try:
        await ledger.deposit(user, n * COR)
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                await bill(ledger, f"s{i % 8}", user, f"t{i}", (m0, m1))

        await asyncio.gather(*(one(i) for i in range(n)))
        billed = time.perf_counter() - t0
        await ledger.flush(within=300)
        total = time.perf_counter() - t0
        status = await ledger.status()
        return {
            "tasks": n,
            "billed_s": billed,
            "settled_on_chain_s": total,
            "settlements_per_s": n / total,
            "batches": status.batches,
            "failed": len(status.failed),
        }
    finally:
        await ledger.close()


def gas_per_task(node: Anvil) -> dict[int, float]:
    dep = fresh(node)
    chain = Chain.connect(node.url, dep)
    sp = chain.session_payment.functions
    user = Account.create()
    miners = [Account.create().address for _ in range(2)]
    chain.transact(ROUTER, sp.deposit_for(user.address), value=1_000 * COR)
    cursor, out = 0, {}
    for size in (1, 10, 100):
        session = ref32(f"s{size}")
        funds = [(session, user.address, 100 * COR)]
        chain.transact(ROUTER, sp.apply_batch(cursor, cursor + 1, funds, [], [], [], [], []))
        cursor += 1
        sets, pays = [], []
        for i in range(size):
            sets.append((session, ref32(f"g{size}-{i}"), COR // 100, 2))
            pays += [(miners[0], COR // 20), (miners[1], COR // 50)]
        receipt = chain.transact(ROUTER, sp.apply_batch(cursor, cursor + 1, [], sets, pays, [], [], []))
        cursor += 1
        out[size] = receipt["gasUsed"] / size
    return out


async def latency(node: Anvil, tmp: Path, n: int) -> dict[str, dict[str, float]]:
    dep = fresh(node)
    user, m0, m1 = (Account.create().address for _ in range(3))
    sqlite = await Ledger.open(f"sqlite+aiosqlite:///{tmp / 'c-sqlite.db'}", pools=StakePools(POOLS))
    evm = await open_evm(dep, tmp / "c-evm.db", batch_size=100, batch_interval_s=0.2)
    result = {}
    try:
        await sqlite.deposit(user, n * COR)
        await evm.deposit(user, n * COR)
        samples: dict[str, list[float]] = {"sqlite": [], "evm": []}
        for i in range(n):  # interleaved, so both see the same machine
            for name, led in (("sqlite", sqlite), ("evm", evm)):
                samples[name].append(await bill(led, "s", user, f"t{i}", (m0, m1)) * 1000)
        for name, xs in samples.items():
            result[name] = {
                "p50_ms": statistics.median(xs),
                "p99_ms": pct(xs, 0.99),
                "mean_ms": statistics.fmean(xs),
            }
        await evm.flush()
    finally:
        await sqlite.close()
        await evm.close()
    return result


async def outage(node: Anvil, tmp: Path, outage_s: float, rate: float) -> dict[str, Any]:
    dep = fresh(node)
    user, m0, m1 = (Account.create().address for _ in range(3))
    ledger = await open_evm(dep, tmp / "d.db", batch_size=100, batch_interval_s=0.2, rpc_timeout_s=2.0)
    lat: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    phase = "before"
    try:
        await ledger.deposit(user, 100_000 * COR)
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                lat[phase].append(await bill(ledger, f"s{i % 4}", user, f"t{i}", (m0, m1)) * 1000)
                i += 1
                await asyncio.sleep(1 / rate)

        gen = asyncio.create_task(load())
        await asyncio.sleep(5)
        node.pause()
        phase = "during"
        states = set()
        t_pause = time.perf_counter()
        while time.perf_counter() - t_pause < outage_s:
            states.add((await ledger.status()).state)
            await asyncio.sleep(0.5)
        node.resume()
        phase = "after"
        t_resume = time.perf_counter()
        await asyncio.sleep(5)
        stop.set()
        await gen
        await ledger.flush(within=300)
        drained = time.perf_counter() - t_resume
        chain = ledger.link.chain
        sp = chain.session_payment.functions
        agree = True
        for a in (user, m0, m1):
            agree &= chain.call(sp.balance_of(a)) == await ledger.balance(a)
        for k in range(4):
            agree &= chain.call(sp.escrow_of(ref32(f"s{k}"))) == await ledger.escrow_balance(f"s{k}")
        status = await ledger.status()
        return {
            "outage_s": outage_s,
            "tasks_billed": sum(len(v) for v in lat.values()),
            "tasks_during_outage": len(lat["during"]),
            "p50_ms": {k: statistics.median(v) if v else None for k, v in lat.items()},
            "max_ms_during": max(lat["during"], default=None),
            "sender_states_seen": sorted(states),
            "settled_on_chain": status.tasks_settled,
            "drained_s_after_resume": drained,
            "chain_agrees_with_book": agree,
            "failed": len(status.failed),
        }
    finally:
        await ledger.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    install_anvil()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d, Anvil.start() as node:
        tmp = Path(d)
        console.print(f"anvil {node.url}")
        out["gas_per_task"] = gas_per_task(node)
        out["throughput"] = await throughput(node, tmp, args.tasks)
        out["latency"] = await latency(node, tmp, args.latency_n)
        if args.outage_s > 0:
            out["outage"] = await outage(node, tmp, args.outage_s, args.rate)
    return out


def report(out: dict[str, Any]) -> None:
    t = Table(title="gas per settled task (apply_batch, 2 payouts + fee each)")
    t.add_column("batch size", justify="right")
    t.add_column("gas / task", justify="right")
    for size, gas in out["gas_per_task"].items():
        t.add_row(str(size), f"{gas:,.0f}")
    console.print(t)
    th = out["throughput"]
    console.print(
        f"settlements through batching: {th['tasks']} tasks billed in {th['billed_s']:.2f} s, all on chain after "
        f"{th['settled_on_chain_s']:.2f} s = [bold]{th['settlements_per_s']:.0f} settlements/s[/] "
        f"({th['batches']} batches, {th['failed']} left out)"
    )
    t = Table(title="billed money path (reserve + settle), sequential")
    for c in ("back-end", "p50 ms", "p99 ms", "mean ms"):
        t.add_column(c, justify="right")
    for name, r in out["latency"].items():
        t.add_row(name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['mean_ms']:.2f}")
    console.print(t)
    if "outage" in out:
        console.print("outage:", json.dumps(out["outage"], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=50.0, help="billed tasks/s offered during the outage run")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(main_async(args))
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
