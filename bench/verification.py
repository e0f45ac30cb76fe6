"""Proof of Inference, measured: what redundancy costs, what validation costs, and how well it catches cheats.

    python -m bench.verification [--tasks 200] [--garbage 1] [--rounds 12]

Three parts, one run, one machine (router, miners and client all on this machine's cores):

1. k=1 vs k=3 on the embedded model (SmolLM2-135M, llama.cpp): a router and three honest miner processes;
   sequential requests alternate between a k=1/none session and a k=3/m=2/semantic session (same prompts,
   temperature 0), then a closed loop of 3 concurrent clients per session. Latency p50/p90, requests/s, ratio.
2. Validation cost per task: embedding k=3 real outputs with all-MiniLM-L6-v2 and grouping them (semantic), and
   digest grouping (exact), in-process, in ms.
3. Detection: the same three honest miners plus ``--garbage`` miners that follow the protocol perfectly but answer
   with garbage (the instant engine advertising the real model's name: a lazy miner). ``--tasks`` real tasks at
   k=3, m=2, semantic. Detection rate = garbage reveals marked dissent / garbage reveals; false dissent = honest
   reveals marked dissent / honest reveals; wrong answers = tasks whose chosen answer came from a garbage miner.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from bench._common import (
    BENCH_KEY,
    Procs,
    Summary,
    console,
    free_port,
    hivemesh_argv,
    router_data_dir,
    wait_healthz,
    warn_if_busy,
)

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Give one tip for better sleep.",
    "What is 12 plus 30?",
    "Describe the sea in one sentence.",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "Say hello in Spanish.",
    "What is the opposite of cold?",
    "Name a planet in our solar system.",
    "What colour is the sky on a clear day?",
    "Give a synonym for happy.",
]


def start_network(procs: Procs, tmp: Path, *, garbage: int) -> tuple[str, dict[str, str]]:
    port = free_port()
    rdir = router_data_dir(tmp / "router")
    router = procs.start(
        "router",
        hivemesh_argv("router", "--port", str(port), "--data-dir", str(rdir), "--log-level", "warning"),
    )
    wait_healthz("127.0.0.1", port, [router], timeout=180)
    threads = str(max(1, (os.cpu_count() or 1) // 3))
    miners = []
    for i in range(3):
        miners.append(
            procs.start(
                f"honest-{i}",
                hivemesh_argv(
                    "miner",
                    "--router",
                    f"http://127.0.0.1:{port}",
                    "--data-dir",
                    str(tmp / f"h{i}"),
                    "--threads",
                    threads,
                    "--log-level",
                    "warning",
                ),
            )
        )
    for i in range(garbage):
        miners.append(
            procs.start(
                f"garbage-{i}",
                hivemesh_argv(
                    "miner",
                    "--router",
                    f"http://127.0.0.1:{port}",
                    "--data-dir",
                    str(tmp / f"g{i}"),
                    "--engine",
                    "instant",
                    "--model",
                    MODEL,
                    "--capacity",
                    "1",
                    "--log-level",
                    "warning",
                ),
            )
        )
    wait_healthz("127.0.0.1", port, [router, *miners], min_miners=3 + garbage, timeout=300)
    url = f"http://127.0.0.1:{port}"
    roles = {}
    for d, role in [(tmp / f"h{i}", "honest") for i in range(3)] + [
        (tmp / f"g{i}", "garbage") for i in range(garbage)
    ]:
        from hivemesh.identity import Identity

        roles[Identity.load_or_create(d / "node.key").address] = role
    return url, roles


def session(c: httpx.Client, **kw: Any) -> str:
    r = c.post("/api/v1/sessions", json=kw)
    r.raise_for_status()
    return str(r.json()["id"])


def ask(c: httpx.Client, sid: str, prompt: str, max_tokens: int = 32) -> dict[str, Any]:
    r = c.post(
        "/v1/chat/completions",
        headers={"x-hivemesh-session": sid},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "seed": 1,
            "max_tokens": max_tokens,
        },
    )
    r.raise_for_status()
    return dict(r.json())


def part_redundancy(url: str, rounds: int, duration: float) -> None:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {BENCH_KEY}"}, timeout=120) as c:
        s1 = session(c, redundancy=1, quorum=1, mode="none")
        s3 = session(c, redundancy=3, quorum=2, mode="semantic")
        ask(c, s1, "warm up")
        ask(c, s3, "warm up")
        lat: dict[str, list[float]] = {"k=1": [], "k=3": []}
        verdicts: dict[str, int] = {}
        for i in range(rounds):
            for name, sid in (("k=1", s1), ("k=3", s3)):
                t0 = time.perf_counter()
                out = ask(c, sid, PROMPTS[i % len(PROMPTS)])
                lat[name].append(time.perf_counter() - t0)
                if name == "k=3":
                    verdicts[out["hivemesh"]["verdict"]] = verdicts.get(out["hivemesh"]["verdict"], 0) + 1
        rps: dict[str, float] = {}
        for name, sid in (("k=1", s1), ("k=3", s3)):
            stop = time.perf_counter() + duration

            def worker(sid: str = sid, stop: float = stop) -> int:
                n = 0
                with httpx.Client(
                    base_url=url, headers={"authorization": f"Bearer {BENCH_KEY}"}, timeout=120
                ) as cc:
                    while time.perf_counter() < stop:
                        ask(cc, sid, PROMPTS[n % len(PROMPTS)])
                        n += 1
                return n

            t0 = time.perf_counter()
            with ThreadPoolExecutor(3) as ex:
                done = sum(ex.map(lambda _: worker(), range(3)))
            rps[name] = done / (time.perf_counter() - t0)
    t = Table(title="1. k=1 vs k=3 on the embedded model (32 tokens, temperature 0)")
    for col in ("session", "latency p50", "latency p90", "requests/s (3 clients)"):
        t.add_column(col, justify="right")
    for name in ("k=1", "k=3"):
        s = Summary.of(lat[name])
        t.add_row(name, f"{s.p50 * 1000:.0f} ms", f"{s.p90 * 1000:.0f} ms", f"{rps[name]:.2f}")
    a, b = Summary.of(lat["k=1"]), Summary.of(lat["k=3"])
    t.add_row(
        "k=3 / k=1", f"{b.p50 / a.p50:.2f}x", f"{b.p90 / a.p90:.2f}x", f"{rps['k=3'] / rps['k=1']:.2f}x"
    )
    console.print(t)
    console.print(f"k=3 verdicts: {verdicts}")


def part_validation_cost(samples: list[list[str]]) -> None:
    import numpy as np

    from hivemesh.core.agreement import Reveal, decide
    from hivemesh.engines.embedder import Embedder
    from hivemesh.protocol.wire import NodeId

    emb = Embedder.load()
    emb.embed(["warm up"])
    sem: list[float] = []
    exact: list[float] = []
    for texts in samples:
        reveals = [Reveal(NodeId(f"n{i}"), t) for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        vecs = emb.embed(texts)
        decide(reveals, mode="semantic", quorum=2, vectors=np.asarray(vecs))
        sem.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decide(reveals, mode="exact", quorum=2)
        exact.append(time.perf_counter() - t0)
    t = Table(title=f"2. validation cost per task (k=3 real outputs, {len(samples)} tasks)")
    for col in ("mode", "p50", "p90", "max"):
        t.add_column(col, justify="right")
    for name, v in (("semantic (embed + group)", sem), ("exact (digest + group)", exact)):
        s = Summary.of(v)
        t.add_row(name, f"{s.p50 * 1000:.2f} ms", f"{s.p90 * 1000:.2f} ms", f"{s.max * 1000:.2f} ms")
    console.print(t)


def part_detection(url: str, roles: dict[str, str], tasks: int) -> list[list[str]]:
    counts = {
        "garbage_reveals": 0,
        "garbage_dissent": 0,
        "honest_reveals": 0,
        "honest_dissent": 0,
        "wrong": 0,
    }
    verdicts: dict[str, int] = {}
    samples: list[list[str]] = []
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {BENCH_KEY}"}, timeout=120) as c:
        sid = session(c, redundancy=3, quorum=2, mode="semantic")
        started = time.time()
        for i in range(tasks):
            out = ask(c, sid, PROMPTS[i % len(PROMPTS)] + f" ({i})", max_tokens=24)
            block = out["hivemesh"]
            verdicts[block["verdict"]] = verdicts.get(block["verdict"], 0) + 1
            task = c.get(f"/api/v1/tasks/{sid}/{block['task_id']}").json()
            deadline = time.monotonic() + 30
            while task["phase"] != "ended" and time.monotonic() < deadline:
                time.sleep(0.05)
                task = c.get(f"/api/v1/tasks/{sid}/{block['task_id']}").json()
            outputs = []
            for m in task["miners"]:
                if m["status"] != "committed":
                    continue
                role = roles.get(m["node"], "honest")
                outputs.append(m["output"] or "")
                counts[f"{role}_reveals"] += 1
                if m["in_consensus"] is False:
                    counts[f"{role}_dissent"] += 1
            if roles.get(block["answered_by"]) == "garbage":
                counts["wrong"] += 1
            if len(outputs) == 3:
                samples.append(outputs)
            if (i + 1) % 25 == 0:
                console.print(f"  detection: {i + 1}/{tasks} tasks")
    t = Table(title=f"3. detection over {tasks} real tasks (k=3, m=2, semantic, threshold 0.85)")
    for col in (
        "garbage reveals",
        "detected (dissent)",
        "detection rate",
        "honest reveals",
        "false dissent",
        "false-dissent rate",
        "wrong answers",
    ):
        t.add_column(col, justify="right")
    g, h = counts["garbage_reveals"], counts["honest_reveals"]
    t.add_row(
        str(g),
        str(counts["garbage_dissent"]),
        f"{counts['garbage_dissent'] / g:.1%}" if g else "n/a",
        str(h),
        str(counts["honest_dissent"]),
        f"{counts['honest_dissent'] / h:.2%}" if h else "n/a",
        str(counts["wrong"]),
    )
    console.print(t)
    console.print(f"verdicts: {verdicts}")
    node_report(url, roles, started)
    return samples


def node_report(url: str, roles: dict[str, str], started: float) -> None:
    """Each node's reputation after the run, and when (after how many seconds) a node was quarantined."""
    t = Table(title="reputation after the run (24 h window)")
    for col in (
        "node",
        "role",
        "total",
        "precommit",
        "commit",
        "agreement",
        "level",
        "quarantined",
        "quarantined after",
    ):
        t.add_column(col, justify="right")
    with httpx.Client(base_url=url, timeout=30) as c:
        for node, role in sorted(roles.items(), key=lambda kv: kv[1]):
            d = c.get(f"/dashboard/api/nodes/{node}").json()
            sc = d["scores"]
            q_at = [e["at"] for e in d["events"] if e["kind"] == "quarantined"]
            t.add_row(
                node[:10] + "…",
                role,
                f"{sc['total']:.3f}",
                f"{sc['precommit']:.3f}",
                f"{sc['commit']:.3f}",
                f"{sc['agreement']:.3f}",
                str(d["level"]),
                "yes" if d["quarantined"] else "no",
                f"{min(q_at) - started:.1f} s" if q_at else "-",
            )
    console.print(t)


def screenshot(url: str, out: Path, tmp: Path) -> None:
    import subprocess

    subprocess.run(
        [
            "/usr/bin/chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'chromium'}",
            "--virtual-time-budget=4000",
            "--window-size=1440,1000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    console.print(f"dashboard screenshot: {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=200, help="real tasks for the detection part")
    ap.add_argument("--garbage", type=int, default=1, help="garbage miners among the 3 honest ones")
    ap.add_argument("--rounds", type=int, default=12, help="sequential requests per session in part 1")
    ap.add_argument(
        "--screenshot", help="save a PNG of the dashboard after the detection run (Debian chromium)"
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of closed-loop load per session")
    args = ap.parse_args()
    warn_if_busy()
    with tempfile.TemporaryDirectory(prefix="hm-bench-") as d, Procs(Path(d)) as procs:
        url, _ = start_network(procs, Path(d) / "a", garbage=0)
        part_redundancy(url, args.rounds, args.duration)
        procs.stop_all()
        url, roles = start_network(procs, Path(d) / "b", garbage=args.garbage)
        samples = part_detection(url, roles, args.tasks)
        if args.screenshot:
            screenshot(url + "/dashboard", Path(args.screenshot), Path(d))
        procs.stop_all()
    part_validation_cost(samples[:100] or [["a b c", "a b c", "x y z"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
