"""The billed path's cost: the same requests with the router's static admin key (not billed) and with a ledger
key (billed: reserve before, settle after), on one router (``--no-semantic``) and ``instant`` miners staked for
pool 1 (billed work goes only to staked nodes), each its own OS process.

Two router runs, one per default mode: ``none`` (k=1) and ``token`` (one generator + one verifier). Cells, each a
closed loop of C keep-alive connections for D seconds:

  admin key                 unbilled, the router's default session
  ledger key, default       billed; the key's default session is topped up from the account as needed
  ledger key, session       billed; a custom session funded up front (x-hivemesh-session header)
  ... k=3 exact             (mode none run only) the same with sessions of redundancy 3, quorum 3, mode exact

Cells run in ``--rounds`` interleaved rounds (a busy spell on a shared machine hits every cell alike); the table
shows medians: req/s, router(+miner) CPU ms per request and the billed/unbilled ratios (targets: router CPU
<= 1.3x, req/s >= 0.8x), and every non-200 status: a funded account must never see a 402 (``--count-402 N`` sends at
least N requests on the default session for that count). After each run, ``hivemesh ledger verify`` must pass
and no hold may be left locked. ``--profile CELL`` py-spies the router during that cell.

    python -m bench.billed [--concurrency 32] [--duration 10] [--modes none,token] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.table import Table

from bench._common import (
    BENCH_KEY,
    LoadResult,
    Proc,
    Procs,
    StartupFailed,
    Summary,
    console,
    free_port,
    hivemesh_argv,
    http_request_bytes,
    ms,
    profile_tables,
    py_spy,
    router_data_dir,
    run_load,
    wait_healthz,
    warn_if_busy,
)

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "instant-echo"
COR = 10**18
ACCOUNT = "0x" + "b1" * 20
MINER_POOL = 1


def body(max_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Name three colours of the rainbow, in order."},
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 7,
        }
    )


def stake_miners(data: Path, miner_dirs: list[Path]) -> None:
    """Fund and stake each miner's identity for ``MINER_POOL`` in the router's ledger, before the router runs."""
    from hivemesh.config import BillingConfig
    from hivemesh.identity import Identity
    from hivemesh.ledger import Ledger
    from hivemesh.ledger.views import StakePools

    async def go() -> None:
        pools = BillingConfig().stake_pools
        ledger = await Ledger.open(f"sqlite+aiosqlite:///{data / 'ledger.db'}", pools=StakePools(dict(pools)))
        try:
            for d in miner_dirs:
                node = Identity.load_or_create(d / "node.key").address
                await ledger.deposit(node, pools[MINER_POOL], reason="bench: miner stake")
                await ledger.stake(node, pools[MINER_POOL], MINER_POOL)
        finally:
            await ledger.close()

    asyncio.run(go())


def setup_keys(port: int) -> dict[str, str]:
    """A funded account and its key; funded custom sessions (k=1 and k=3 exact) and the admin's k=3 session."""
    admin = {"authorization": f"Bearer {BENCH_KEY}"}
    out: dict[str, str] = {}
    with httpx.Client(base_url=f"http://{HOST}:{port}/api/v1", timeout=30) as c:
        r = c.post("/admin/deposits", json={"account": ACCOUNT, "amount": str(100_000 * COR)}, headers=admin)
        r.raise_for_status()
        r = c.post("/admin/keys", json={"account": ACCOUNT, "name": "bench"}, headers=admin)
        r.raise_for_status()
        out["secret"] = secret = str(r.json()["secret"])
        user = {"authorization": f"Bearer {secret}"}
        for name, extra in (("k1", {}), ("k3", {"redundancy": 3, "quorum": 3, "mode": "exact"})):
            r = c.post("/sessions", json={"name": name, **extra}, headers=user)
            r.raise_for_status()
            out[name] = sid = str(r.json()["id"])
            r = c.post(f"/sessions/{sid}/deposit", json={"amount": str(10_000 * COR)}, headers=user)
            r.raise_for_status()
        r = c.post(
            "/sessions", json={"name": "k3", "redundancy": 3, "quorum": 3, "mode": "exact"}, headers=admin
        )
        r.raise_for_status()
        out["admin_k3"] = str(r.json()["id"])
    return out


@dataclass
class Cell:
    name: str
    headers: dict[str, str]
    base: str  # the unbilled cell it is compared with
    runs: list[tuple[LoadResult, float, float]] = field(default_factory=list)  # (load, router ms, miner ms)

    def median(self, i: int) -> float:
        values = sorted(r.rps if i == 0 else r_ms if i == 1 else m_ms for r, r_ms, m_ms in self.runs)
        return values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1 :][:2]) / 2

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r, _, _ in self.runs:
            for k, v in r.statuses.items():
                out[k] = out.get(k, 0) + v
        return out


def cells_for(mode: str, ids: dict[str, str]) -> list[Cell]:
    admin = {"Authorization": f"Bearer {BENCH_KEY}"}
    user = {"Authorization": f"Bearer {ids['secret']}"}
    first = f"{mode}: admin key (unbilled)"
    cells = [
        Cell(first, admin, first),
        Cell(f"{mode}: ledger key, default session", user, first),
        Cell(f"{mode}: ledger key, funded session", {**user, "x-hivemesh-session": ids["k1"]}, first),
    ]
    if mode == "none":
        k3 = "k=3 exact: admin key (unbilled)"
        cells += [
            Cell(k3, {**admin, "x-hivemesh-session": ids["admin_k3"]}, k3),
            Cell("k=3 exact: ledger key, funded session", {**user, "x-hivemesh-session": ids["k3"]}, k3),
        ]
    return cells


def measure(
    cell: Cell, port: int, router: Proc, miners: list[Proc], req_body: bytes, args: argparse.Namespace
) -> None:
    req = http_request_bytes(HOST, port, PATH, req_body, cell.headers)
    console.print(f"{cell.name}: {args.concurrency} connections, {args.warmup:.0f}+{args.duration:.0f}s ...")
    cpu0 = router.cpu_seconds(), sum(m.cpu_seconds() for m in miners)
    res = run_load(HOST, port, req, args.concurrency, args.duration, args.warmup)
    cpu1 = router.cpu_seconds(), sum(m.cpu_seconds() for m in miners)
    n = max(1, sum(res.statuses.values()))
    per = ((args.duration + args.warmup) / args.duration) if res.ok else 1.0  # CPU counted over warm-up too
    cell.runs.append((res, (cpu1[0] - cpu0[0]) * 1000 / (n * per), (cpu1[1] - cpu0[1]) * 1000 / (n * per)))


def run_mode(mode: str, args: argparse.Namespace, req_body: bytes, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Procs(tmp) as procs:
        data = router_data_dir(tmp / "router")
        miner_dirs = [tmp / f"miner-{i}" for i in range(args.miners)]
        stake_miners(data, miner_dirs)
        port = free_port()
        router = procs.start(
            "router",
            hivemesh_argv(
                "router", "--host", HOST, "--port", str(port), "--data-dir", str(data),
                "-k", "1", "-m", "1", "--mode", mode, "--verifiers", "1", "--no-semantic",
                "--log-level", "warning",
            ),
        )  # fmt: skip
        wait_healthz(HOST, port, [router])
        miners = []
        for i, d in enumerate(miner_dirs):
            argv = hivemesh_argv(
                "miner", "--router", f"http://{HOST}:{port}", "--engine", "instant",
                "--data-dir", str(d), "--capacity", "256", "--pool", str(MINER_POOL),
            )  # fmt: skip
            miners.append(procs.start(f"miner-{i}", argv))
        wait_healthz(HOST, port, [router, *miners], min_miners=len(miners))
        ids = setup_keys(port)
        cells = cells_for(mode, ids)
        for rnd in range(args.rounds):  # interleaved, so a busy spell on the machine hits every cell alike
            for cell in cells:
                if rnd == 0 and args.profile and args.profile in cell.name:
                    prof = tmp / f"profile-{mode}.txt"
                    with py_spy(router.pid, prof):
                        measure(cell, port, router, miners, req_body, args)
                    for tb in profile_tables(f"router, {cell.name}", prof, top=args.profile_top):
                        console.print(tb)
                    if args.profile_out:
                        args.profile_out.mkdir(parents=True, exist_ok=True)
                        (args.profile_out / prof.name).write_bytes(prof.read_bytes())
                else:
                    measure(cell, port, router, miners, req_body, args)
                time.sleep(0.5)  # let settlements drain before the next cell
        extra_402 = 0
        if args.count_402 and mode == args.modes.split(",")[0]:
            req = http_request_bytes(HOST, port, PATH, req_body, cells[1].headers)
            sent = 0
            console.print(f"402 check: at least {args.count_402} requests on the default session ...")
            while sent < args.count_402:
                res = run_load(HOST, port, req, args.concurrency, 5.0, 0.0)
                sent += sum(res.statuses.values())
                extra_402 += res.statuses.get(402, 0)
            out["402_check"] = {"requests": sent, "402": extra_402}
        procs.stop_all()
    verify = subprocess.run(
        hivemesh_argv("ledger", "verify", "--data-dir", str(data)), capture_output=True, text=True
    )
    with sqlite3.connect(data / "ledger.db") as db:
        locked = db.execute("SELECT count(*) FROM holds WHERE state = 'held'").fetchone()[0]
    by_name = {c.name: c for c in cells}
    tb = Table(
        title=f"billed vs unbilled, default mode {mode}, {args.miners} instant miners, C={args.concurrency}, "
        f"median of {args.rounds} interleaved rounds"
    )
    for col in ("cell", "req/s", "x unbilled", "router CPU ms/req", "x unbilled", "miner CPU ms/req", "p50 ms", "statuses"):  # fmt: skip
        tb.add_column(col, justify="left" if col in ("cell", "statuses") else "right")
    for c in cells:
        base = by_name[c.base]
        rps, r_ms, m_ms = c.median(0), c.median(1), c.median(2)
        rps_x = rps / base.median(0) if base.median(0) else float("nan")
        cpu_x = r_ms / base.median(1) if base.median(1) else float("nan")
        p50 = Summary.of([x for r, _, _ in c.runs for x in r.latencies_ms]).p50
        statuses = c.statuses()
        tb.add_row(
            c.name,
            f"{rps:.0f}",
            f"{rps_x:.2f}",
            f"{r_ms:.2f}",
            f"{cpu_x:.2f}",
            f"{m_ms:.2f}",
            ms(p50, 2),
            ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        )
        out[c.name] = {
            "rps": rps,
            "rps_x_unbilled": rps_x,
            "router_cpu_ms_per_req": r_ms,
            "router_cpu_x_unbilled": cpu_x,
            "miner_cpu_ms_per_req": m_ms,
            "statuses": statuses,
            "p50_ms": p50,
            "runs": [(r.rps, r_ms_i) for r, r_ms_i, _ in c.runs],
        }
    console.print(tb)
    n402 = extra_402 + sum(c.statuses().get(402, 0) for c in cells)
    console.print(f"402s from a funded account: {n402}; holds left locked: {locked}")
    console.print(
        f"ledger verify: {'ok' if verify.returncode == 0 else 'FAILED'} {verify.stdout.strip()[-200:]}"
    )
    out.update({"402": n402, "locked_holds": locked, "verify_ok": verify.returncode == 0})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", "-c", type=int, default=32)
    ap.add_argument("--duration", "-d", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--miners", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (medians reported)")
    ap.add_argument("--modes", default="none,token", help="default session modes to run, comma-separated")
    ap.add_argument(
        "--count-402", type=int, default=0, help="send at least N more requests for the 402 count"
    )
    ap.add_argument("--profile", help="py-spy the router during the first cell whose name contains this")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's collapsed stacks here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S seconds for an idle machine")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args()
    warn_if_busy(wait=args.wait_quiet)
    req_body = body(args.max_tokens)
    out: dict[str, Any] = {"concurrency": args.concurrency, "duration": args.duration}
    ok = True
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"hivemesh-billed-{mode}-") as tmp_s:
            try:
                out[mode] = run_mode(mode, args, req_body, Path(tmp_s))
            except StartupFailed as exc:
                console.print(f"[red]startup failed: {exc}")
                return 2
        ok = ok and out[mode]["verify_ok"] and out[mode]["402"] == 0 and out[mode]["locked_holds"] == 0
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
