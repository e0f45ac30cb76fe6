"""Crash the router under billed load and count what the money path left behind.

A router (``hivemesh router``, its own process, SQLite store and ledger in one data dir) with ``instant`` miners
staked for pool 1, and a ledger key sending billed requests (its default session, topped up from the account,
and a funded custom session; streamed and not) from C concurrent connections. Every ``--load`` seconds the
router is SIGKILLed and started again on the same data dir and port (the miners reconnect). After the last
restart the load stops, the router finishes what it recovered (re-dispatched tasks, stranded and orphan holds),
and is stopped with SIGTERM (its last signed checkpoint). Then, from the databases:

  locked holds of ended tasks   a hold still ``held`` whose task ended or failed            (target 0)
  orphan holds                  a hold still ``held`` with no task row                      (target 0)
  verified-but-unbilled tasks   an answered task that cost something whose hold is not settled (target 0)
  answered but not billed       a verified answer the client received whose hold is not settled (target 0)
  holds still held              any hold not settled or released                           (target 0)
  ledger verify                 ``hivemesh ledger verify`` (chains, balances, signed checkpoint)
  COR conserved                 every balance, world included, sums to 0; outside world = deposits

    python -m bench.crash [--kills 10] [--load 3] [--concurrency 16] [--mode token] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    Proc,
    Procs,
    console,
    free_port,
    hivemesh_argv,
    router_data_dir,
    wait_healthz,
)
from bench.billed import COR, HOST, MINER_POOL, body, setup_keys, stake_miners

BODY = json.loads(body(16))  # the request bench.billed measures


@dataclass
class CrashReport:
    kills: int
    statuses: dict[str, int] = field(default_factory=dict)
    tasks: int = 0
    locked_ended: int = 0
    orphans: int = 0
    unbilled: int = 0
    answered: int = 0  # verified answers received in full (not streamed) by the client
    answered_unbilled: int = 0  # of those, tasks whose hold is not settled
    held: int = 0
    settled: int = 0
    released: int = 0
    verify_ok: bool = False
    verify_output: str = ""
    balance_sum: int = 0  # every account, world included: 0 when nothing was created or lost
    outside_world: int = 0  # every account but world
    deposits: int = 0  # what was deposited from the world (the test's own deposits)
    checkpoints: int = 0

    @property
    def conserved(self) -> bool:
        return self.balance_sum == 0 and self.outside_world == self.deposits

    @property
    def clean(self) -> bool:
        return (
            self.locked_ended == self.orphans == self.unbilled == self.held == self.answered_unbilled == 0
            and self.verify_ok
            and self.conserved
        )


class Load:
    """Billed requests from ``concurrency`` workers in a thread, until ``stop``; counts outcomes."""

    def __init__(self, port: int, secret: str, session: str, concurrency: int) -> None:
        self.url = f"http://{HOST}:{port}/v1/chat/completions"
        self.headers = [
            {"authorization": f"Bearer {secret}"},
            {"authorization": f"Bearer {secret}", "x-hivemesh-session": session},
        ]
        self.concurrency = concurrency
        self.statuses: dict[str, int] = {}
        self.answered: list[str] = []  # task ids of the verified answers the user received in full
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=15) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            stream = n % 3 == 0
            body = {**BODY, "stream": stream}
            try:
                async with client.stream("POST", self.url, json=body, headers=self.headers[n % 2]) as r:
                    data = await r.aread()
                    key = str(r.status_code) + (" stream" if stream else "")
                    if (
                        r.status_code == 200
                        and not stream
                        and r.headers.get("x-hivemesh-verdict") == "verified"
                    ):
                        self.answered.append("task_" + json.loads(data)["id"].removeprefix("chatcmpl-"))
            except httpx.HTTPError as exc:
                key = type(exc).__name__
                await asyncio.sleep(0.05)
            self.statuses[key] = self.statuses.get(key, 0) + 1


def start_router(procs: Procs, data: Path, port: int, mode: str, n: int) -> Proc:
    return procs.start(
        f"router-{n}",
        hivemesh_argv(
            "router", "--host", HOST, "--port", str(port), "--data-dir", str(data),
            "-k", "1", "-m", "1", "--mode", mode, "--verifiers", "1", "--no-semantic",
            "--log-level", "warning",
        ),
    )  # fmt: skip


def held_count(ledger_db: Path) -> int:
    with sqlite3.connect(f"file:{ledger_db}?mode=ro", uri=True, timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM holds WHERE state = 'held'").fetchone()[0])


def crash_run(
    tmp: Path,
    kills: int,
    load_s: float = 3.0,
    concurrency: int = 16,
    mode: str = "token",
    miners: int = 3,
    settle_timeout_s: float = 120.0,
    log: Any = None,
) -> CrashReport:
    say = log or (lambda msg: None)
    report = CrashReport(kills)
    data = router_data_dir(tmp / "router")
    miner_dirs = [tmp / f"miner-{i}" for i in range(miners)]
    stake_miners(data, miner_dirs)
    with Procs(tmp) as procs:
        port = free_port()
        router = start_router(procs, data, port, mode, 0)
        wait_healthz(HOST, port, [router])
        ms = []
        for i, d in enumerate(miner_dirs):
            argv = hivemesh_argv(
                "miner", "--router", f"http://{HOST}:{port}", "--engine", "instant",
                "--data-dir", str(d), "--capacity", "64", "--pool", str(MINER_POOL),
            )  # fmt: skip
            ms.append(procs.start(f"miner-{i}", argv))
        wait_healthz(HOST, port, [router, *ms], min_miners=miners)
        ids = setup_keys(port)
        load = Load(port, ids["secret"], ids["k1"], concurrency)
        load.start()
        try:
            for k in range(kills):
                time.sleep(load_s * random.uniform(0.5, 1.5))
                os.killpg(router.pid, signal.SIGKILL)
                router.popen.wait(10)
                procs.procs.remove(router)
                say(f"kill {k + 1}/{kills}: router SIGKILLed under load; restarting")
                router = start_router(procs, data, port, mode, k + 1)
                wait_healthz(HOST, port, [router], min_miners=miners, timeout=60)
            time.sleep(load_s)
        finally:
            load.stop()
        report.statuses = dict(load.statuses)
        answered = list(load.answered)
        say(f"load stopped: {report.statuses}; waiting for the router to close every hold")
        deadline = time.monotonic() + settle_timeout_s
        while time.monotonic() < deadline and held_count(data / "ledger.db") > 0:
            time.sleep(0.5)
        procs.stop(router)  # SIGTERM: a clean stop, with the last signed checkpoint
        for m in ms:
            procs.stop(m)
    verify = subprocess.run(
        hivemesh_argv("ledger", "verify", "--data-dir", str(data)), capture_output=True, text=True
    )
    report.verify_ok = verify.returncode == 0
    report.verify_output = (verify.stdout + verify.stderr).strip()[-400:]
    count(report, data, answered)
    return report


def count(report: CrashReport, data: Path, answered: list[str]) -> None:
    """Fill the report's counts from the router's store and ledger."""
    with sqlite3.connect(data / "router.db") as store:
        tasks = {
            tid: (phase, json.loads(result) if result else None)
            for tid, phase, result in store.execute("SELECT id, phase, result FROM tasks")
        }
    with sqlite3.connect(data / "ledger.db") as db:
        holds = dict(db.execute("SELECT task_id, state FROM holds").fetchall())
        balances = {a: int(b) for a, b in db.execute("SELECT address, balance FROM accounts")}
        deposits = db.execute(
            "SELECT p.delta FROM postings p JOIN entries e ON e.id = p.entry_id "
            "WHERE e.kind = 'deposit' AND p.account = 'world'"
        ).fetchall()
    report.tasks = len(tasks)
    report.held = sum(1 for s in holds.values() if s == "held")
    report.settled = sum(1 for s in holds.values() if s == "settled")
    report.released = sum(1 for s in holds.values() if s == "released")
    report.locked_ended = sum(
        1 for t, s in holds.items() if s == "held" and t in tasks and tasks[t][0] in ("ended", "failed")
    )
    report.orphans = sum(1 for t, s in holds.items() if s == "held" and t not in tasks)
    report.unbilled = sum(
        1
        for t, (phase, result) in tasks.items()
        if phase == "ended" and result and int(result.get("cost") or 0) > 0 and holds.get(t) != "settled"
    )
    report.answered = len(answered)
    report.answered_unbilled = sum(1 for t in answered if holds.get(t) != "settled")
    report.balance_sum = sum(balances.values())
    report.outside_world = sum(b for a, b in balances.items() if a != "world")
    report.deposits = -sum(int(d) for (d,) in deposits)
    path = data / "ledger.db.checkpoints"
    report.checkpoints = len(path.read_text().splitlines()) if path.exists() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--load", type=float, default=3.0, help="seconds of load between kills (jittered)")
    ap.add_argument("--concurrency", "-c", type=int, default=16)
    ap.add_argument("--mode", default="token", help="the router's default mode: token, exact or none")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hivemesh-crash-") as tmp:
        report = crash_run(Path(tmp), args.kills, args.load, args.concurrency, args.mode, log=console.print)
    console.print(f"requests: {report.statuses}")
    console.print(
        f"tasks {report.tasks}; holds settled {report.settled}, released {report.released}, still held "
        f"{report.held}"
    )
    console.print(
        f"after {report.kills} SIGKILLs: locked holds of ended tasks {report.locked_ended}, orphan holds "
        f"{report.orphans}, verified-but-unbilled tasks {report.unbilled}; verified answers the client "
        f"received {report.answered}, of them not billed {report.answered_unbilled}"
    )
    console.print(f"ledger verify: {'ok' if report.verify_ok else 'FAILED'}: {report.verify_output}")
    console.print(
        f"COR conserved: {report.conserved} (all balances sum to {report.balance_sum}; outside world "
        f"{report.outside_world / COR} COR = deposits {report.deposits / COR} COR); checkpoints written: "
        f"{report.checkpoints}"
    )
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "conserved": report.conserved}, indent=2))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
