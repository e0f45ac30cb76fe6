"""The billed path's cost: the same requests with the router's static admin key (not billed) and with ledger
keys (billed: reserve before, settle after), on one router (k=1, mode none, --no-semantic) and one ``instant``
miner, each its own OS process.

Cells, each a closed loop of C keep-alive connections for D seconds:
  admin key             unbilled
  ledger key, default   billed; the key's default session is topped up from the account as needed
  ledger key, session   billed; a custom session funded up front (x-hivemesh-session header)

Reports req/s, router(+miner) CPU ms per request, the billed/unbilled ratios, and every non-200 status
(a funded account must never see a 402). After the run, ``hivemesh ledger verify`` must pass and no hold may
be left locked.

    python -m bench.billed [--concurrency 32] [--duration 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.table import Table

from bench._common import (
    BENCH_KEY,
    LoadResult,
    Procs,
    StartupFailed,
    Summary,
    console,
    free_port,
    hivemesh_argv,
    http_request_bytes,
    ms,
    router_data_dir,
    run_load,
    wait_healthz,
)

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "instant-echo"
COR = 10**18
ACCOUNT = "0x" + "b1" * 20


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


def setup_keys(port: int) -> tuple[str, str]:
    """A funded account, its key, and a funded custom session: -> (secret, session id). Amounts stay below
    2**64 base units so the same script measures routers older than exact big-amount parsing."""
    admin = {"authorization": f"Bearer {BENCH_KEY}"}
    with httpx.Client(base_url=f"http://{HOST}:{port}/api/v1", timeout=30) as c:
        r = c.post("/admin/deposits", json={"account": ACCOUNT, "amount": 15 * COR}, headers=admin)
        r.raise_for_status()
        r = c.post("/admin/keys", json={"account": ACCOUNT, "name": "bench"}, headers=admin)
        r.raise_for_status()
        secret = str(r.json()["secret"])
        user = {"authorization": f"Bearer {secret}"}
        r = c.post("/sessions", json={"name": "bench"}, headers=user)
        r.raise_for_status()
        sid = str(r.json()["id"])
        r = c.post(f"/sessions/{sid}/deposit", json={"amount": 5 * COR}, headers=user)
        r.raise_for_status()
    return secret, sid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", "-c", type=int, default=32)
    ap.add_argument("--duration", "-d", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args()
    req_body = body(args.max_tokens)
    out: dict[str, Any] = {"concurrency": args.concurrency, "duration": args.duration}
    with tempfile.TemporaryDirectory(prefix="hivemesh-billed-") as tmp_s, Procs(Path(tmp_s)) as procs:
        tmp = Path(tmp_s)
        data = router_data_dir(tmp / "router")
        try:
            port = free_port()
            router = procs.start(
                "router",
                hivemesh_argv(
                    "router", "--host", HOST, "--port", str(port), "--data-dir", str(data),
                    "-k", "1", "-m", "1", "--mode", "none", "--no-semantic", "--log-level", "warning",
                ),
            )  # fmt: skip
            wait_healthz(HOST, port, [router])
            miner = procs.start(
                "miner",
                hivemesh_argv(
                    "miner", "--router", f"http://{HOST}:{port}", "--engine", "instant",
                    "--data-dir", str(tmp / "miner"), "--capacity", "256",
                ),
            )  # fmt: skip
            wait_healthz(HOST, port, [router, miner], min_miners=1)
            secret, sid = setup_keys(port)
            cells = [
                ("admin key (unbilled)", {"Authorization": f"Bearer {BENCH_KEY}"}),
                ("ledger key, default session", {"Authorization": f"Bearer {secret}"}),
                (
                    "ledger key, funded session",
                    {"Authorization": f"Bearer {secret}", "x-hivemesh-session": sid},
                ),
            ]
            results: dict[str, tuple[LoadResult, float, float]] = {}
            for name, headers in cells:
                console.print(
                    f"{name}: {args.concurrency} connections, {args.warmup:.0f}+{args.duration:.0f}s ..."
                )
                req = http_request_bytes(HOST, port, PATH, req_body, headers)
                cpu0 = router.cpu_seconds(), miner.cpu_seconds()
                res = run_load(HOST, port, req, args.concurrency, args.duration, args.warmup)
                cpu1 = router.cpu_seconds(), miner.cpu_seconds()
                n = max(1, sum(res.statuses.values()))
                total_s = args.duration + args.warmup  # CPU is read over warm-up too: per request of both
                per = (total_s / args.duration) if res.ok else 1.0
                results[name] = (
                    res,
                    (cpu1[0] - cpu0[0]) * 1000 / (n * per),
                    (cpu1[1] - cpu0[1]) * 1000 / (n * per),
                )
                time.sleep(1.0)  # let settlements drain before the next cell
        except StartupFailed as exc:
            console.print(f"[red]startup failed: {exc}")
            return 2
        finally:
            procs.stop_all()
        verify = subprocess.run(
            hivemesh_argv("ledger", "verify", "--data-dir", str(data)), capture_output=True, text=True
        )
        with sqlite3.connect(data / "ledger.db") as db:
            locked = db.execute("SELECT count(*) FROM holds WHERE state = 'held'").fetchone()[0]
    base_rps = results[cells[0][0]][0].rps
    base_cpu = results[cells[0][0]][1]
    tb = Table(title=f"billed vs unbilled, k=1 mode none, instant miner, C={args.concurrency}")
    for col in (
        "cell",
        "req/s",
        "x unbilled",
        "router CPU ms/req",
        "x unbilled",
        "miner CPU ms/req",
        "p50 ms",
        "statuses",
    ):
        tb.add_column(col, justify="left" if col in ("cell", "statuses") else "right")
    for name, (res, rcpu, mcpu) in results.items():
        s = Summary.of(res.latencies_ms)
        tb.add_row(
            name,
            f"{res.rps:.0f}",
            f"{res.rps / base_rps:.2f}" if base_rps else "-",
            f"{rcpu:.2f}",
            f"{rcpu / base_cpu:.2f}" if base_cpu else "-",
            f"{mcpu:.2f}",
            ms(s.p50, 2),
            ", ".join(f"{k}: {v}" for k, v in sorted(res.statuses.items())),
        )
        out[name] = {
            "rps": res.rps,
            "router_cpu_ms_per_req": rcpu,
            "miner_cpu_ms_per_req": mcpu,
            "statuses": res.statuses,
            "p50_ms": s.p50,
        }
    console.print(tb)
    n402 = sum(r.statuses.get(402, 0) for r, _, _ in results.values())
    console.print(f"402s from a funded account: {n402}; holds left locked: {locked}")
    console.print(
        f"ledger verify: {'ok' if verify.returncode == 0 else 'FAILED'} {verify.stdout.strip()[-200:]}"
    )
    out.update({"402": n402, "locked_holds": locked, "verify_ok": verify.returncode == 0})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if verify.returncode == 0 and n402 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
