"""The evm ledger back-end on a real anvil: batching throughput, gas per settled task, the billed path's latency
against SQLite, and a 30-second chain outage under load.

    python -m bench.chain [--parts gas,throughput,latency,http,outage] [--tasks 1000] [--outage-s 30] [--json FILE]

(a) settlements/s: N billed tasks (reserve + settle, 2 payouts + fee each) written concurrently to an
    ``EvmLedger`` (batch size 100, interval 0.2 s); the clock runs from the first settlement until the chain's
    journal cursor has caught up with the last.
(b) gas per settled task: ``apply_batch`` with 1, 10 and 100 settlements sent straight to the contract.
(c) latency of the billed money path (one reserve + one settle, sequential) on the evm back-end vs plain SQLite:
    the hot path writes the local book only, so they should match.
(d) outage: a steady billed load; anvil frozen (SIGSTOP) for ``--outage-s`` seconds in the middle, then resumed.
    Counts billed tasks, hot-path latency during the outage, time to drain, and whether the chain agrees with the
    book afterwards (nothing lost, nothing doubled, nothing left out).
(e) latency of a billed HTTP request: a router process (``--no-semantic``, mode none, k=1) and one instant miner
    staked for pool 1 on each back-end, both running at once; a funded account's key sends chat completions
    (the key's default session, topped up from the account), sequentially and alternating between the two
    routers, then a closed loop of ``--http-concurrency`` connections on each in turn. The request path is the
    same code on both; only the ledger under it differs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from rich.console import Console
from rich.table import Table

from bench._common import (
    BENCH_KEY,
    Procs,
    SeqClient,
    Summary,
    free_port,
    hivemesh_argv,
    http_request_bytes,
    profile_tables,
    py_spy,
    router_data_dir,
    run_load,
    wait_healthz,
)
from hivemesh.chain.anvil import DEV_KEY, Anvil, install_anvil
from hivemesh.chain.client import Chain, Deployment
from hivemesh.chain.deploy import deploy
from hivemesh.cli.chain import deploy_to, open_ledger_for
from hivemesh.config import BillingConfig, RouterConfig
from hivemesh.identity import Identity
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


HOST = "127.0.0.1"
MINER_POOL = 1
CHAT = json.dumps(
    {
        "model": "instant-echo",
        "messages": [{"role": "user", "content": "Name three colours of the rainbow, in order."}],
        "max_tokens": 16,
        "seed": 7,
    }
).encode()


def send_value(node: Anvil, to: list[str], value: int) -> None:
    """Native value from anvil's dev account (gas money for a key that signs)."""
    chain = Chain.connect(node.url)
    for address in to:
        tx = {"to": address, "value": value, "gas": 21_000, "gasPrice": chain.w3.eth.gas_price * 2}
        tx |= {"nonce": chain.nonces.take(ROUTER.address), "chainId": chain.w3.eth.chain_id}
        signed = ROUTER.sign_transaction(tx)
        chain.w3.eth.wait_for_transaction_receipt(chain.w3.eth.send_raw_transaction(signed.raw_transaction))


def http_network(backend: str, node: Anvil, tmp: Path) -> tuple[Path, Path]:
    """A router data dir (its SQLite ledger, or with ``chain.json`` on fresh contracts: the evm back-end) and a
    miner's dir, the miner staked for pool 1 on that ledger before the router starts."""
    data = router_data_dir(tmp / f"http-{backend}" / "router")
    miner_dir = tmp / f"http-{backend}" / "miner"
    miner = Identity.load_or_create(miner_dir / "node.key")
    if backend == "evm":
        router = Identity.load_or_create(data / "router.key")
        send_value(node, [router.address], 1_000_000 * COR)
        send_value(node, [miner.address], 10 * COR)
        deploy_to(node.url, data, ROUTER, cooldown_s=0)

    async def stake() -> None:
        ledger = await open_ledger_for(RouterConfig(data_dir=data), [miner])
        try:
            need = BillingConfig().stake_pools[MINER_POOL]
            await ledger.deposit(miner.address, need)
            await ledger.stake(miner.address, need, MINER_POOL)
        finally:
            await ledger.close()

    asyncio.run(stake())
    return data, miner_dir


def billed_key(port: int) -> str:
    """A funded account (the router's admin deposit: on the evm back-end, paid on chain) and its API key."""
    admin = {"authorization": f"Bearer {BENCH_KEY}"}
    account = Account.create().address
    with httpx.Client(base_url=f"http://{HOST}:{port}/api/v1", headers=admin, timeout=60) as c:
        c.post("/admin/deposits", json={"account": account, "amount": str(100_000 * COR)}).raise_for_status()
        r = c.post("/admin/keys", json={"account": account, "name": "bench.chain"})
        r.raise_for_status()
        return str(r.json()["secret"])


def http_latency(
    node: Anvil, tmp: Path, n: int, concurrency: int, duration: float, profile: bool = False
) -> dict[str, Any]:
    backends = ("sqlite", "evm")
    out: dict[str, Any] = {}
    with Procs(tmp) as procs:
        ports: dict[str, int] = {}
        routers = {}
        for b in backends:
            data, miner_dir = http_network(b, node, tmp)
            ports[b] = port = free_port()
            router = procs.start(
                f"router-{b}",
                hivemesh_argv(
                    "router", "--host", HOST, "--port", str(port), "--data-dir", str(data), "--no-semantic",
                    "-k", "1", "-m", "1", "--mode", "none", "--log-level", "warning",
                ),
            )  # fmt: skip
            wait_healthz(HOST, port, [router])
            routers[b] = router
            miner = procs.start(
                f"miner-{b}",
                hivemesh_argv(
                    "miner", "--router", f"http://{HOST}:{port}", "--engine", "instant", "--capacity", "256",
                    "--data-dir", str(miner_dir), "--pool", str(MINER_POOL), "--log-level", "warning",
                ),
            )  # fmt: skip
            wait_healthz(HOST, port, [router, miner], min_miners=1)
        keys = {b: billed_key(ports[b]) for b in backends}
        clients = {
            b: SeqClient(HOST, ports[b], "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {keys[b]}"})
            for b in backends
        }
        samples: dict[str, list[float]] = {b: [] for b in backends}
        statuses: dict[str, dict[int, int]] = {b: {} for b in backends}
        for i in range(n + 20):  # 20 warm-up requests each, alternating, so both see the same machine
            for b in backends:
                status, body, dt = clients[b].call()
                statuses[b][status] = statuses[b].get(status, 0) + 1
                if status != 200:
                    raise RuntimeError(f"{b}: HTTP {status} {body[:300]!r}")
                if i >= 20:
                    samples[b].append(dt * 1000)
        for c in clients.values():
            c.close()
        for b in backends:
            seq = Summary.of(samples[b])
            req = http_request_bytes(
                HOST, ports[b], "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {keys[b]}"}
            )
            cpu0 = routers[b].cpu_seconds()
            prof = tmp / f"profile-{b}.txt"
            with py_spy(routers[b].pid, prof) if profile else contextlib.nullcontext():
                load = run_load(HOST, ports[b], req, concurrency, duration, 1.0)
            if profile:
                for tb in profile_tables(f"router on {b}, closed loop", prof, top=15):
                    console.print(tb)
            counted = max(1, sum(load.statuses.values())) * (duration + 1.0) / duration  # warm-up's CPU too
            cpu_ms = (routers[b].cpu_seconds() - cpu0) * 1000 / counted
            conc = Summary.of(load.latencies_ms)
            out[b] = {
                "sequential": {"n": seq.n, "p50_ms": seq.p50, "p99_ms": seq.p99, "mean_ms": seq.mean},
                "concurrent": {
                    "connections": concurrency,
                    "rps": load.rps,
                    "p50_ms": conc.p50,
                    "p99_ms": conc.p99,
                    "statuses": dict(load.statuses),
                    "router_cpu_ms_per_request": cpu_ms,
                },
            }
    return out


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


PARTS = ("gas", "throughput", "latency", "http", "outage")


def run(args: argparse.Namespace) -> dict[str, Any]:
    install_anvil()
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d, Anvil.start() as node:
        tmp = Path(d)
        console.print(f"anvil {node.url}")
        if "gas" in parts:
            out["gas_per_task"] = gas_per_task(node)
        if "throughput" in parts:
            out["throughput"] = asyncio.run(throughput(node, tmp, args.tasks))
        if "latency" in parts:
            out["latency"] = asyncio.run(latency(node, tmp, args.latency_n))
        if "http" in parts:  # subprocesses: in the main thread (their clean-up handles SIGTERM)
            out["http"] = http_latency(
                node, tmp, args.http_n, args.http_concurrency, args.http_duration, args.http_profile
            )
        if "outage" in parts and args.outage_s > 0:
            out["outage"] = asyncio.run(outage(node, tmp, args.outage_s, args.rate))
    return out


def report(out: dict[str, Any]) -> None:
    if "gas_per_task" in out:
        t = Table(title="gas per settled task (apply_batch, 2 payouts + fee each)")
        t.add_column("batch size", justify="right")
        t.add_column("gas / task", justify="right")
        for size, gas in out["gas_per_task"].items():
            t.add_row(str(size), f"{gas:,.0f}")
        console.print(t)
    if "throughput" in out:
        th = out["throughput"]
        console.print(
            f"settlements through batching: {th['tasks']} tasks billed in {th['billed_s']:.2f} s, all on chain "
            f"after {th['settled_on_chain_s']:.2f} s = [bold]{th['settlements_per_s']:.0f} settlements/s[/] "
            f"({th['batches']} batches, {th['failed']} left out)"
        )
    if "latency" in out:
        t = Table(title="billed money path (reserve + settle), sequential")
        for c in ("back-end", "p50 ms", "p99 ms", "mean ms"):
            t.add_column(c, justify="right")
        for name, r in out["latency"].items():
            t.add_row(name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['mean_ms']:.2f}")
        console.print(t)
    if "http" in out:
        t = Table(
            title="billed chat completions over HTTP (router + 1 instant miner, mode none, default session)"
        )
        cols = (
            "back-end",
            "sequential n",
            "p50 ms",
            "p99 ms",
            "closed loop req/s",
            "p50 ms",
            "p99 ms",
            "router CPU ms/req",
            "statuses",
        )
        for c in cols:
            t.add_column(c, justify="right")
        for name, r in out["http"].items():
            seq, conc = r["sequential"], r["concurrent"]
            t.add_row(
                name,
                str(seq["n"]),
                f"{seq['p50_ms']:.2f}",
                f"{seq['p99_ms']:.2f}",
                f"{conc['rps']:.0f} (C={conc['connections']})",
                f"{conc['p50_ms']:.1f}",
                f"{conc['p99_ms']:.1f}",
                f"{conc['router_cpu_ms_per_request']:.2f}",
                ", ".join(f"{k}: {v}" for k, v in sorted(conc["statuses"].items())),
            )
        console.print(t)
    if "outage" in out:
        console.print("outage:", json.dumps(out["outage"], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=50.0, help="billed tasks/s offered during the outage run")
    p.add_argument("--http-n", type=int, default=300, help="sequential billed chat completions per back-end")
    p.add_argument("--http-concurrency", type=int, default=16)
    p.add_argument(
        "--http-duration", type=float, default=10.0, help="seconds of closed-loop load per back-end"
    )
    p.add_argument("--http-profile", action="store_true", help="py-spy each router during its closed loop")
    p.add_argument("--parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = run(args)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
