"""The router's own cost, measured with the ``instant`` engine (a miner that answers at once).

Starts, each as its own OS process: a router (k=1, mode none, --no-semantic), one ``--engine instant`` miner,
and a bare ASGI baseline on the same uvicorn/httptools/uvloop stack that answers with the router's own response
body (captured from a real request, so the same size). Optionally a LiteLLM proxy in front of that baseline.

(a) added latency: sequential requests on one keep-alive connection (http.client), interleaved across targets;
    router added latency = router p50 - baseline p50 (includes the WebSocket hop to the miner and back,
    signature signing/verification, scheduling and the SQLite writes of the task record).
(b) throughput: closed loop of C keep-alive connections for D seconds from an asyncio/uvloop load generator
    in this process (pre-encoded request, parses only status line and framing). The load generator shares
    the machine's cores with the servers: that is part of the figure.
(c) peer: the same two measurements through LiteLLM's proxy (its own venv: --litellm-python).
(d) billed (unless --no-billed): the same router with a ledger key (reserve before, settle after): its default
    session (topped up from the account) and a funded custom session, k=1; and k=3 exact sessions for the admin
    and the ledger key. Three instant miners, staked for pool 1 (billed work goes to staked nodes only), serve
    every target then. Each billed target's router CPU/request is compared with its unbilled twin (target
    <= 1.3x); ``bench.billed`` measures the same cells in interleaved rounds, in modes none and token.

    python -m bench.overhead [--requests 2000] [--concurrency 32] [--duration 10] [--profile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from bench._common import (
    LoadResult,
    Proc,
    Procs,
    SeqClient,
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
    wait_until,
    warn_if_busy,
)
from bench.billed import MINER_POOL, setup_keys, stake_miners

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "instant-echo"
LATENCY_TARGET_MS = 2.0
RPS_TARGET = 500.0


def request_body(max_tokens: int) -> bytes:
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


class Target:
    def __init__(self, name: str, port: int, proc: Proc | None, note: str) -> None:
        self.name, self.port, self.proc, self.note = name, port, proc, note
        self.seq: list[float] = []
        self.seq_errors = 0
        self.load: LoadResult | None = None
        self.cpu: dict[str, float] = {}
        self.watch: list[Proc] = [proc] if proc else []  # server-side processes whose CPU this target costs
        self.seq_cpu_s = 0.0
        self.headers = {"Authorization": "Bearer sk-bench"}
        self.twin: Target | None = None  # a billed target's unbilled twin


# ---------------------------------------------------------------------------------------------- litellm


def litellm_python(arg: str | None) -> tuple[str | None, str]:
    """-> (python to run LiteLLM with, or None; why not)."""
    # an explicit --litellm-python is the only candidate; else $LITELLM_PYTHON, then /tmp/litellm-venv
    candidates = [arg] if arg else [os.environ.get("LITELLM_PYTHON", ""), "/tmp/litellm-venv/bin/python"]
    tried = []
    for py in [c for c in candidates if c]:
        if not Path(py).exists():
            tried.append(f"{py}: not found")
            continue
        r = subprocess.run(
            [py, "-c", "import litellm.proxy.proxy_cli"], capture_output=True, text=True, timeout=120
        )
        if r.returncode == 0:
            return py, ""
        tried.append(
            f"{py}: cannot import litellm.proxy ({(r.stderr.strip().splitlines() or ['?'])[-1][:120]})"
        )
    try:  # the current interpreter (the main venv normally lacks it: we never install it there)
        import litellm  # noqa: F401

        return sys.executable, ""
    except ImportError:
        tried.append("this venv: litellm not importable")
    return None, "; ".join(tried) + (
        ". Install it apart: python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]' httptools"
    )


def start_litellm(procs: Procs, py: str, tmp: Path, upstream_port: int, timeout: float) -> Target:
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://{HOST}:{upstream_port}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {
        # like the hivemesh router here, an open proxy (no key check on either side)
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network here
        "LITELLM_LOG": "ERROR",
        "NO_DOCS": "True",
    }
    workdir = tmp / "litellm"
    workdir.mkdir()
    proc = procs.start(
        "litellm",
        [
            py,
            "-m",
            "litellm.proxy.proxy_cli",
            "--config",
            str(cfg),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env=env,
        cwd=workdir,
    )

    def live() -> bool:
        import http.client

        c = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            c.request("GET", "/health/liveliness")
            return c.getresponse().status == 200
        finally:
            c.close()

    wait_until("litellm /health/liveliness", live, [proc], timeout=timeout)
    return Target("litellm proxy", port, proc, "LiteLLM proxy → canned upstream (openai/ provider)")


# ---------------------------------------------------------------------------------------------- measurements


def sequential(targets: list[Target], body: bytes, n: int, warmup: int, rounds: int) -> None:
    """One request in flight; targets interleaved in ``rounds`` blocks so drift hits them all alike."""
    clients = {t.name: SeqClient(HOST, t.port, PATH, body, t.headers) for t in targets}
    try:
        for t in targets:
            for _ in range(warmup):
                clients[t.name].call()
        per = max(1, n // rounds)
        for _ in range(rounds):
            for t in targets:
                c = clients[t.name]
                c.reconnect()  # the connection idled while the other targets ran
                for _ in range(5):
                    c.call()
                cpu0 = sum(p.cpu_seconds() for p in t.watch)
                for _ in range(per):
                    status, _, sec = c.call()
                    if status == 200:
                        t.seq.append(sec * 1000.0)
                    else:
                        t.seq_errors += 1
                t.seq_cpu_s += sum(p.cpu_seconds() for p in t.watch) - cpu0
    finally:
        for c in clients.values():
            c.close()


def throughput(
    t: Target, body: bytes, procs_cpu: list[Proc], concurrency: int, duration: float, warmup: float
) -> None:
    req = http_request_bytes(HOST, t.port, PATH, body, t.headers)
    before = {p.name: p.cpu_seconds() for p in procs_cpu}
    wall0 = time.monotonic()
    t.load = run_load(HOST, t.port, req, concurrency, duration, warmup)
    wall = time.monotonic() - wall0
    for p in procs_cpu:
        t.cpu[p.name] = (p.cpu_seconds() - before[p.name]) / wall * 100.0
    t.cpu["load generator"] = t.load.client_cpu_s / wall * 100.0


# ---------------------------------------------------------------------------------------------- output


def latency_table(targets: list[Target], base: Target) -> Table:
    tb = Table(
        title=f"(a) latency, 1 request in flight, keep-alive http.client ({len(base.seq)} requests each, ms)"
    )
    for col in (
        "target",
        "p50",
        "p90",
        "p99",
        "mean",
        "errors",
        "added p50 vs baseline",
        "server CPU ms/req",
    ):
        tb.add_column(col, justify="left" if col == "target" else "right")
    b = Summary.of(base.seq)
    for t in targets:
        s = Summary.of(t.seq)
        added = "-" if t is base else f"{s.p50 - b.p50:+.3f}"
        cpu = t.seq_cpu_s * 1000 / max(1, len(t.seq) + t.seq_errors)
        who = "+".join(p.name for p in t.watch)
        tb.add_row(
            t.name,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.mean),
            str(t.seq_errors),
            added,
            f"{cpu:.2f} ({who})",
        )
    return tb


def load_table(targets: list[Target], concurrency: int, duration: float) -> Table:
    tb = Table(
        title=f"(b) throughput, closed loop, {concurrency} connections, {duration:.0f}s (latency in ms)"
    )
    for col in ("target", "req/s", "ok", "errors", "p50", "p90", "p99", "max", "CPU % by process"):
        tb.add_column(col, justify="left" if col in ("target", "CPU % by process") else "right")
    for t in targets:
        if t.load is None:
            continue
        s = Summary.of(t.load.latencies_ms)
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in t.cpu.items())
        tb.add_row(
            t.name,
            f"{t.load.rps:.0f}",
            str(t.load.ok),
            str(t.load.errors),
            ms(s.p50, 2),
            ms(s.p90, 2),
            ms(s.p99, 2),
            ms(s.max, 1),
            cpu,
        )
    return tb


def billed_table(billed: list[Target], router: Proc) -> Table:
    """(d): each billed target against its unbilled twin: req/s and the router's CPU per request (under load)."""
    tb = Table(title="(d) billed vs unbilled (router CPU per request under load; target <= 1.3x)")
    for col in ("target", "req/s", "x unbilled", "router CPU ms/req", "x unbilled", "non-200"):
        tb.add_column(col, justify="left" if col == "target" else "right")

    def per_req(t: Target) -> float:
        return (
            t.cpu.get(router.name, 0.0) / 100.0 / t.load.rps * 1000 if t.load and t.load.rps else float("nan")
        )

    for t in billed:
        rps = t.load.rps if t.load else 0.0
        twin = t.twin
        twin_rps = twin.load.rps if twin is not None and twin.load else 0.0
        bad = {k: v for k, v in (t.load.statuses if t.load else {}).items() if k != 200}
        tb.add_row(
            t.name,
            f"{rps:.0f}",
            f"{rps / twin_rps:.2f}" if twin_rps else "-",
            f"{per_req(t):.2f}",
            f"{per_req(t) / per_req(twin):.2f}" if twin is not None else "-",
            ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "-",
        )
    return tb


def cpu_per_request_table(t: Target, duration: float) -> Table | None:
    if t.load is None or not t.load.ok:
        return None
    tb = Table(title=f"CPU cost per request under load ({t.name})")
    tb.add_column("process")
    tb.add_column("CPU %", justify="right")
    tb.add_column("CPU µs / request", justify="right")
    for name, pc in t.cpu.items():
        tb.add_row(name, f"{pc:.0f}", f"{pc / 100.0 / t.load.rps * 1e6:.0f}")
    return tb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", "-n", type=int, default=2000, help="sequential requests per target (a)")
    ap.add_argument("--warmup-requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4, help="interleaving blocks for (a)")
    ap.add_argument("--concurrency", "-c", type=int, default=32, help="connections for (b)")
    ap.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds for (b)")
    ap.add_argument("--load-warmup", type=float, default=2.0, help="unmeasured seconds before (b)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument(
        "--litellm-python",
        help="python of a venv with 'litellm[proxy]' (default: /tmp/litellm-venv/bin/python)",
    )
    ap.add_argument("--no-litellm", action="store_true", help="skip (c)")
    ap.add_argument("--no-billed", action="store_true", help="skip (d): one unstaked miner, admin key only")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the measurements, py-spy the router (and miner) under load",
    )
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's collapsed stacks here")
    ap.add_argument("--router-log-level", default="info")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for an idle machine",
    )
    args = ap.parse_args()

    body = request_body(args.max_tokens)
    busy = warn_if_busy(wait=args.wait_quiet)
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine_busy_before_pct": busy,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    litellm_skip = "--no-litellm" if args.no_litellm else ""
    py = None
    if not args.no_litellm:
        py, litellm_skip = litellm_python(args.litellm_python)

    with tempfile.TemporaryDirectory(prefix="hivemesh-bench-") as tmp_s, Procs(Path(tmp_s)) as procs:
        tmp = Path(tmp_s)
        try:
            rport = free_port()
            t0 = time.monotonic()
            router_dir = router_data_dir(tmp / "router")
            if not args.no_billed:
                stake_miners(router_dir, [tmp / "miner", tmp / "miner-2", tmp / "miner-3"])
            router = procs.start(
                "router",
                hivemesh_argv(
                    "router",
                    "--host",
                    HOST,
                    "--port",
                    str(rport),
                    "--data-dir",
                    str(router_dir),
                    "-k",
                    "1",
                    "-m",
                    "1",
                    "--mode",
                    "none",
                    "--no-semantic",
                    "--log-level",
                    args.router_log_level,
                ),
            )
            wait_healthz(HOST, rport, [router])
            miner_dirs = [tmp / "miner", tmp / "miner-2", tmp / "miner-3"][: 1 if args.no_billed else 3]
            miners: list[Proc] = []
            for i, d in enumerate(miner_dirs):
                pool = [] if args.no_billed else ["--pool", str(MINER_POOL)]
                argv = [
                    "miner",
                    "--router",
                    f"http://{HOST}:{rport}",
                    "--engine",
                    "instant",
                    "--data-dir",
                    str(d),
                ]
                miners.append(
                    procs.start("miner" if i == 0 else f"miner-{i + 1}", hivemesh_argv(*argv, *pool))
                )
            miner = miners[0]
            wait_healthz(HOST, rport, [router, *miners], min_miners=len(miners))
            console.print(
                f"router + instant miner ready in {time.monotonic() - t0:.1f}s (router pid {router.pid}, miner pid {miner.pid})"
            )

            # capture the router's real answer: the baseline serves the same bytes
            c = SeqClient(HOST, rport, PATH, body, {"Authorization": "Bearer sk-bench"})
            status, sample, _ = c.call()
            c.close()
            if status != 200:
                raise StartupFailed(f"router answered HTTP {status}: {sample[:300]!r}")
            (tmp / "canned.json").write_bytes(sample)
            bport = free_port()
            baseline = procs.start(
                "baseline",
                [
                    sys.executable,
                    "-m",
                    "bench.baseline_server",
                    "--host",
                    HOST,
                    "--port",
                    str(bport),
                    "--body-file",
                    str(tmp / "canned.json"),
                ],
            )
            wait_healthz(HOST, bport, [baseline])
            console.print(f"baseline ready (pid {baseline.pid}), canned body {len(sample)} bytes")

            base = Target("baseline (bare ASGI)", bport, baseline, "uvicorn+httptools+uvloop, no app logic")
            hm = Target("hivemesh (router+miner)", rport, router, "k=1, mode none, no semantic")
            hm.watch = [router, *miners]
            targets = [base, hm]
            billed: list[Target] = []
            if not args.no_billed:
                ids = setup_keys(rport)
                user = {"Authorization": f"Bearer {ids['secret']}"}
                k3 = Target(
                    "hivemesh k=3 exact, admin key", rport, router, "k=3 quorum 3, mode exact, unbilled"
                )
                k3.headers = {**k3.headers, "x-hivemesh-session": ids["admin_k3"]}
                for name, headers, twin in (
                    ("hivemesh, ledger key, default session", user, hm),
                    ("hivemesh, ledger key, funded session", {**user, "x-hivemesh-session": ids["k1"]}, hm),
                    ("hivemesh k=3 exact, ledger key", {**user, "x-hivemesh-session": ids["k3"]}, k3),
                ):
                    t = Target(name, rport, router, "billed")
                    t.headers, t.twin = headers, twin
                    billed.append(t)
                billed.insert(2, k3)
                for t in billed:
                    t.watch = [router, *miners]
            lite: Target | None = None
            if py:
                try:
                    t1 = time.monotonic()
                    lite = start_litellm(procs, py, tmp, bport, timeout=180)
                    # first requests are slow (lazy imports); also checks the path works
                    c = SeqClient(HOST, lite.port, PATH, body, {"Authorization": "Bearer sk-bench"})
                    status, lsample, _ = c.call()
                    c.close()
                    if status != 200:
                        raise StartupFailed(f"litellm answered HTTP {status}: {lsample[:300]!r}")
                    lite.watch = [p for p in (lite.proc, baseline) if p]
                    console.print(
                        f"litellm ready in {time.monotonic() - t1:.1f}s (pid {lite.proc.pid if lite.proc else '?'}), body {len(lsample)} bytes"
                    )
                    targets.append(lite)
                except StartupFailed as exc:
                    litellm_skip = f"litellm failed to start: {str(exc)[:500]}"
                    lite = None

            targets += billed
            # (a)
            console.print(
                f"(a) {args.requests} sequential requests per target, interleaved in {args.rounds} rounds ..."
            )
            sequential(targets, body, args.requests, args.warmup_requests, args.rounds)
            # (b)
            for t in targets:
                console.print(
                    f"(b) {t.name}: {args.concurrency} connections for {args.load_warmup:.0f}+{args.duration:.0f}s ..."
                )
                throughput(t, body, t.watch, args.concurrency, args.duration, args.load_warmup)
            for p in procs.procs:
                if not p.alive():
                    console.print(f"[red]{p.name} died during the run:\n{p.tail()}")

            # ------------------------------------------------------------------ report
            console.print()
            console.print(latency_table(targets, base))
            console.print(load_table(targets, args.concurrency, args.duration))
            cpt = cpu_per_request_table(hm, args.duration)
            if cpt:
                console.print(cpt)
            if billed:
                console.print(billed_table(billed, router))
            for t in targets:
                if t.load and t.load.error_samples:
                    console.print(f"[yellow]{t.name} error samples: {t.load.error_samples}")
                if t.seq_errors or (t.load and t.load.errors):
                    for shown in [t.proc] + ([miner] if t is hm else []):
                        if shown is not None:
                            console.print(
                                f"[yellow]--- last lines of {shown.name}'s log:\n{shown.tail(15)}",
                                markup=False,
                            )

            b, h = Summary.of(base.seq), Summary.of(hm.seq)
            added = h.p50 - b.p50
            rps = hm.load.rps if hm.load else 0.0
            verdict = Table(title="targets")
            for col in ("metric", "measured", "target", "met"):
                verdict.add_column(col, justify="left" if col == "metric" else "right")
            verdict.add_row(
                "router added latency p50 (miner hop, signatures, SQLite writes included)",
                f"{added:.3f} ms",
                f"≤ {LATENCY_TARGET_MS:.0f} ms",
                "yes" if added <= LATENCY_TARGET_MS else "NO",
            )
            verdict.add_row(
                f"router throughput, C={args.concurrency}, load generator on the same 2 cores",
                f"{rps:.0f} req/s",
                f"≥ {RPS_TARGET:.0f} req/s",
                "yes" if rps >= RPS_TARGET else "NO",
            )
            console.print(verdict)

            peer: dict[str, Any] = {}
            if lite is not None and lite.load is not None and hm.load is not None:
                ls = Summary.of(lite.seq)
                ladded = ls.p50 - b.p50
                pt = Table(title="(c) hivemesh vs LiteLLM proxy (same baseline upstream / client)")
                for col in ("metric", "hivemesh", "litellm", "ratio"):
                    pt.add_column(col, justify="left" if col == "metric" else "right")
                pt.add_row(
                    "added latency p50 (ms, lower is better)",
                    f"{added:.3f}",
                    f"{ladded:.3f}",
                    f"hivemesh adds {added / ladded:.2f}x LiteLLM's" if ladded > 0 else "-",
                )
                pt.add_row(
                    "throughput (req/s, higher is better)",
                    f"{hm.load.rps:.0f}",
                    f"{lite.load.rps:.0f}",
                    f"hivemesh = {hm.load.rps / lite.load.rps:.2f}x LiteLLM" if lite.load.rps else "-",
                )
                console.print(pt)
                peer = {
                    "litellm_added_p50_ms": ladded,
                    "litellm_rps": lite.load.rps,
                    "latency_ratio": added / ladded if ladded else None,
                    "rps_ratio": hm.load.rps / lite.load.rps if lite.load.rps else None,
                }
            else:
                console.print(f"[yellow](c) LiteLLM peer skipped: {litellm_skip or 'not run'}")
                peer = {"skipped": litellm_skip}

            results.update(
                {
                    "latency_ms": {t.name: vars(Summary.of(t.seq)) for t in targets},
                    "server_cpu_ms_per_request_sequential": {
                        t.name: t.seq_cpu_s * 1000 / max(1, len(t.seq)) for t in targets
                    },
                    "router_added_p50_ms": added,
                    "throughput": {
                        t.name: {
                            "rps": t.load.rps,
                            "ok": t.load.ok,
                            "errors": t.load.errors,
                            "latency_ms": vars(Summary.of(t.load.latencies_ms)),
                            "cpu_pct": t.cpu,
                        }
                        for t in targets
                        if t.load
                    },
                    "peer": peer,
                    "targets_met": {
                        "added_latency": added <= LATENCY_TARGET_MS,
                        "throughput": rps >= RPS_TARGET,
                    },
                }
            )

            # ------------------------------------------------------------------ profile (separate run: py-spy slows the target)
            if args.profile:
                out = args.profile_out or tmp / "profile"
                out.mkdir(parents=True, exist_ok=True)
                dur = max(5.0, args.duration)
                console.print(
                    f"profiling router and miner under the same load for {dur:.0f}s (py-spy, separate run) ..."
                )
                req = http_request_bytes(HOST, rport, PATH, body, {"Authorization": "Bearer sk-bench"})
                with py_spy(router.pid, out / "router.txt", dur), py_spy(miner.pid, out / "miner.txt", dur):
                    run_load(HOST, rport, req, args.concurrency, dur, 0.0)
                for name in ("router", "miner"):
                    f = out / f"{name}.txt"
                    if f.exists() and f.stat().st_size:
                        for tb in profile_tables(name, f):
                            console.print(tb)
                if args.profile_out:
                    console.print(
                        f"collapsed stacks kept in {out} (flamegraph.pl / speedscope can read them)"
                    )
        except StartupFailed as exc:
            console.print(f"[red]startup failed: {exc}")
            return 2
        finally:
            procs.stop_all()

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
