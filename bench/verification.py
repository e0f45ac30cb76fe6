"""Proof of Inference, measured: what verification costs and how well it catches cheats.

    python -m bench.verification                       # token-level verification, reduced (~25 minutes)
    python -m bench.verification --tasks-per-attack 300 --honest-tasks 1000 --cost-rounds 40 --collusion-tasks 100 --max-tokens 128 --honest 5
    python -m bench.verification --part voting [--tasks 200] [--garbage 1] [--rounds 12]

``--part token`` (the default; see the section "token verification" below), real SmolLM2 miner processes, every
session created through the Session API with ``{"mode": "token", "verifiers": v}``:

(a) detection per attack (``bench.attackers``: swap, runner_up, sampled, ignore_seed, truncate, garbage,
    other_model): one attacker among ``--honest`` honest miners until it generated ``--tasks-per-attack`` claims;
    wrong answers served as verified (matched against the attacker's own log of cheated claims), claims caught by
    a fraud proof, fraud strikes; an attacker that gets quarantined rejoins under a fresh identity.
(b) false rejections of honest miners (1- and 2-thread miners, temperature 0 and 0.7 alternating).
(c) cost: token v=1 vs k=1 unverified vs k=3 semantic on the same miners: latency, miner CPU per task (from
    /proc), requests/s and verified tokens/s under 3 concurrent clients, as ratios.
(d) collusion: s sybils (swap generators that accept everything as verifiers) among h honest miners, measured
    wrong-but-verified share next to ``core.verdict.p_all_sybil(s, h, v)`` for v = 1, 2, 3.

``--part voting``, the k=3 redundancy parts, one run, one machine (router, miners and client all on this
machine's cores):

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
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    wait_until,
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


# ============================================================================================ token verification
#
# ``--part token``: the default validation mode. Real SmolLM2 miners as processes (``hivemesh miner``), attackers
# as ``python -m bench.attackers`` processes (they log every claim with whether it cheated), a router process,
# sessions created through the Session API with ``{"mode": "token", "verifiers": v}``.


ATTACK_TEMPERATURE = {"ignore_seed": 0.7}  # every other attack is asked at temperature 0
# Honest miners run as ``hivemesh miner`` with --honest-cli; by default as ``bench.attackers --attack honest`` (the
# same engine, whose claims and CPU time are logged like the attackers').
HONEST_CLI = False


@dataclass
class Member:
    """One miner process of a token network: its role, address, data dir and (attackers) the log of its claims."""

    name: str
    role: str  # "honest" | an attack name | "sybil"
    argv_extra: list[str]
    data_dir: Path
    proc: Any = None
    address: str = ""
    rotations: int = 0
    past: list[str] = field(default_factory=list)  # addresses this member had before a rotation

    @property
    def log(self) -> Path:
        return self.data_dir / "attacks.jsonl"

    def addresses(self) -> set[str]:
        return {self.address, *self.past}


class TokenNet:
    """A router process and miner processes; attackers that get quarantined rejoin under a fresh identity (a
    sybil's cheapest move), so an attack keeps being tried for the whole run."""

    def __init__(
        self, procs: Procs, tmp: Path, max_tokens: int, *, semantic: bool = False, verifiers: int = 1
    ) -> None:
        self.procs, self.tmp, self.max_tokens = procs, tmp, max_tokens
        self.members: dict[str, Member] = {}
        self._ref: str | None = None
        port = free_port()
        rdir = router_data_dir(tmp / "router")
        self.router = procs.start(
            "router",
            hivemesh_argv(
                "router",
                "--port",
                str(port),
                "--data-dir",
                str(rdir),
                "--log-level",
                "warning",
                "--semantic" if semantic else "--no-semantic",
                "--mode",
                "token",
                "--verifiers",
                str(verifiers),
            ),
        )
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        wait_healthz("127.0.0.1", port, [self.router], timeout=180)
        self.http = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {BENCH_KEY}"}, timeout=300
        )

    def close(self) -> None:
        self.http.close()

    def add_honest(self, name: str, threads: int = 1, *, verify_only: bool = False) -> Member:
        extra = ["--threads", str(threads), *(["--verify-only"] if verify_only else [])]
        m = Member(name, "honest", extra, self.tmp / name)
        return self._start(m)

    def add_attacker(self, name: str, attack: str, lie: str = "none", role: str | None = None) -> Member:
        extra = [
            "--attack",
            attack,
            "--lie",
            lie,
            "--threads",
            "1",
            "--cache-dir",
            str(self.tmp.parent / "models"),
        ]
        m = Member(name, role or attack, extra, self.tmp / name)
        return self._start(m)

    def _argv(self, m: Member) -> list[str]:
        common = ["--router", self.url, "--data-dir", str(m.data_dir), "--log-level", "warning"]
        if m.role == "honest" and HONEST_CLI:
            return hivemesh_argv("miner", *common, *m.argv_extra)
        if m.role == "honest":  # the unmodified engine, loaded the way the attackers load it
            return [sys.executable, "-m", "bench.attackers", "--attack", "honest", *common, *m.argv_extra]
        return [sys.executable, "-m", "bench.attackers", *common, *m.argv_extra]

    def _start(self, m: Member, wait: bool = True) -> Member:
        from hivemesh.identity import Identity

        m.data_dir.mkdir(parents=True, exist_ok=True)
        m.address = Identity.load_or_create(m.data_dir / "node.key").address
        m.proc = self.procs.start(f"{m.name}-{m.rotations}", self._argv(m))
        self.members[m.name] = m
        if wait:
            self.wait_joined([m])
        return m

    def wait_joined(self, members: list[Member]) -> None:
        want = {m.address for m in members}

        def joined() -> bool:
            have = {d["node"] for d in self.http.get("/api/v1/miners").json()["data"]}
            return want <= have

        wait_until(
            "miners joined", joined, [self.router, *(m.proc for m in members)], timeout=300, interval=0.2
        )

    def remove(self, m: Member) -> None:
        self.procs.stop(m.proc)
        self.members.pop(m.name, None)

    def rotate(self, m: Member) -> None:
        """Rejoin ``m`` under a fresh identity (same process, engine and claim log: ``bench.attackers`` watches
        its ``rotate`` file); an honest CLI miner is restarted instead."""
        from hivemesh.identity import Identity

        m.past.append(m.address)
        m.rotations += 1
        if m.role == "honest":
            self.procs.stop(m.proc)
            (m.data_dir / "node.key").unlink(missing_ok=True)
            self._start(m)
            return
        key = m.data_dir / "node.key"
        (m.data_dir / "rotate").touch()
        wait_until(
            "fresh identity",
            lambda: not (m.data_dir / "rotate").exists() and key.exists(),
            [self.router, m.proc],
            timeout=60,
            interval=0.05,
        )
        m.address = Identity.load_or_create(key).address
        self.wait_joined([m])

    def node(self, address: str) -> dict[str, Any]:
        return dict(self.http.get(f"/dashboard/api/nodes/{address}").json())

    def rotate_quarantined(self) -> None:
        for m in list(self.members.values()):
            if m.role != "honest" and self.node(m.address).get("quarantined"):
                self.rotate(m)

    def session(self, **kw: Any) -> str:
        r = self.http.post("/api/v1/sessions", json=kw)
        if r.status_code in (400, 422) and kw.get("mode") == "token":
            # a router whose Session API does not take mode/verifiers (yet): use its defaults when they match
            defaults = self.http.get("/api/v1/info").json().get("defaults", {})
            if defaults.get("mode") == "token" and defaults.get("verifiers", 1) == kw.get("verifiers", 1):
                r = self.http.post("/api/v1/sessions", json={})
        if r.status_code not in (200, 201):
            raise SystemExit(f"POST /api/v1/sessions {kw}: HTTP {r.status_code} {r.text[:300]}")
        return str(r.json()["id"])

    def ask(self, sid: str, prompt: str, *, temperature: float, seed: int) -> tuple[dict[str, Any], float]:
        """One chat completion; -> (the response, seconds). A failed task comes back as {"error": ...}."""
        t0 = time.perf_counter()
        r = self.http.post(
            "/v1/chat/completions",
            headers={"x-hivemesh-session": sid},
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": temperature,
                "seed": seed,
                "max_tokens": self.max_tokens,
            },
        )
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}, dt
        return dict(r.json()), dt

    def reference(self, prompt: str, *, temperature: float, seed: int, exclude: set[str]) -> str | None:
        """The honest answer to a request: asked again in a k=1 unverified session until a node outside
        ``exclude`` generates it (None if that never happens in 6 tries)."""
        if self._ref is None:
            self._ref = self.session(redundancy=1, quorum=1, mode="none")
        for _ in range(6):
            resp, _ = self.ask(self._ref, prompt, temperature=temperature, seed=seed)
            _, by, text = served(resp)
            if by and by not in exclude:
                return text
        return None

    def task(self, sid: str, tid: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            task = dict(self.http.get(f"/api/v1/tasks/{sid}/{tid}").json())
            if task["phase"] in ("ended", "failed") or time.monotonic() > deadline:
                return task
            time.sleep(0.05)

    def strikes(self, addresses: set[str], kinds: tuple[str, ...]) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in addresses:
            for e in self.node(a).get("events", []):
                if e["kind"] in kinds:
                    out[e["kind"]] = out.get(e["kind"], 0) + 1
        return out

    def strike_details(self, addresses: set[str], kinds: tuple[str, ...]) -> list[str]:
        return [
            f"{a[:10]}… {e['kind']} task {e.get('task_id')}: {e.get('detail')}"
            for a in addresses
            for e in self.node(a).get("events", [])
            if e["kind"] in kinds
        ]

    def miner_cpu(self) -> float:
        return sum(m.proc.cpu_seconds() for m in self.members.values())


class GreedyReference:
    """The honest model's greedy answer to a prompt, computed in this process on one thread (the same engine and
    weights as the honest miners, whose profile makes the answer bit-identical to theirs): the reference for an
    attacker that was the only generator. The engine loads on first use and lives on its own event loop."""

    def __init__(self, max_tokens: int) -> None:
        import asyncio

        self.max_tokens = max_tokens
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._engine: Any = None
        self._cache: dict[str, str] = {}

    async def _answer(self, prompt: str) -> str:
        from hivemesh.engines.base import GenerationRequest, Piece
        from hivemesh.engines.llamacpp import LlamaCppEngine
        from hivemesh.protocol.wire import ChatMessage, SamplingParams

        if self._engine is None:
            self._engine = LlamaCppEngine(n_threads=1)
            await self._engine.start()
        req = GenerationRequest(
            model=MODEL,
            kind="chat",
            params=SamplingParams(temperature=0.0, seed=1, max_tokens=self.max_tokens),
            messages=(ChatMessage(role="user", content=prompt),),
        )
        return "".join([ev.text async for ev in self._engine.generate(req) if isinstance(ev, Piece)])

    def greedy(self, prompt: str) -> str:
        import asyncio

        if prompt not in self._cache:
            self._cache[prompt] = asyncio.run_coroutine_threadsafe(self._answer(prompt), self._loop).result()
        return self._cache[prompt]

    def close(self) -> None:
        import asyncio

        if self._engine is not None:
            asyncio.run_coroutine_threadsafe(self._engine.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def cheated_claims(m: Member) -> int:
    """How many claims ``m`` generated while cheating (from its claim log; repeated prompts counted each time)."""
    if not m.log.exists():
        return 0
    return sum(
        1
        for line in m.log.read_text().splitlines()
        if (rec := json.loads(line)).get("role") == "generator" and rec.get("cheated")
    )


def cheated_outputs(m: Member) -> set[tuple[int | None, str]]:
    """The (seed, text) pairs ``m`` claimed while cheating (from its claim log). The seed tells tasks apart: the
    same prompt asked with another seed may have this text as its honest answer (a short sum at temperature 0.7),
    and matching the text alone counted such an honest claim as a verified cheat."""
    out: set[tuple[int | None, str]] = set()
    if m.log.exists():
        for line in m.log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("role") == "generator" and rec.get("cheated"):
                out.add((rec.get("seed"), rec["output"]))
    return out


def short(verdicts: dict[str, int]) -> str:
    """{"verified": 5, "unverified": 2} -> "ver 5, unv 2"."""
    return ", ".join(f"{k[:3] if k != 'unverified' else 'unv'} {v}" for k, v in sorted(verdicts.items()))


def prompt_of(i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} ({i})"


def served(resp: dict[str, Any]) -> tuple[str, str, str]:
    """-> (verdict, answered_by, text) of a response ("error" verdict when the task failed)."""
    if "error" in resp:
        return "error", "", ""
    hm = resp["hivemesh"]
    return (
        str(hm["verdict"]),
        str(hm.get("answered_by") or ""),
        str(resp["choices"][0]["message"]["content"] or ""),
    )


def generators_of(task: dict[str, Any]) -> list[str]:
    return [m["node"] for m in task.get("miners") or [] if m.get("role") == "generator"]


def part_attacks(procs: Procs, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """(a) Each attack in turn: one attacker among ``--honest`` honest miners, ``--tasks-per-attack`` tasks in
    which the attacker was the (first) generator, at most 8x that many tasks in all."""
    net = TokenNet(procs, tmp / "attacks", args.max_tokens)
    reference = GreedyReference(args.max_tokens)
    rows: list[dict[str, Any]] = []
    try:
        gens = args.honest if args.honest_generators is None else args.honest_generators
        honest = [net.add_honest(f"honest-{i}", 1, verify_only=i >= gens) for i in range(args.honest)]
        sid = net.session(mode="token", verifiers=1)
        seen_strikes: set[str] = set()
        lock = threading.Lock()
        by_log = gens == 0  # every generation is the attacker's: judge its verified answers by its log
        for attack in args.attacks:
            a = net.add_attacker(f"attacker-{attack}", attack)
            t0 = time.perf_counter()
            row: dict[str, Any] = {
                "attack": attack,
                "tasks": 0,
                "claims": 0,
                "cheated": 0,
                "caught": 0,
                "wrong_verified": 0,
                "attacker_verified": 0,
                "unverified": 0,
                "rejected": 0,
                "verdicts": {},
            }
            temperature = ATTACK_TEMPERATURE.get(attack, 0.0)
            counter = itertools.count()

            def one(
                i: int, a: Member = a, row: dict[str, Any] = row, temperature: float = temperature
            ) -> None:
                for _ in range(
                    100
                ):  # no free generator right now (the other is busy): wait, it is not a task
                    resp, _ = net.ask(sid, prompt_of(i), temperature=temperature, seed=1000 + i)
                    if "no_miner_available" not in str(resp.get("error", "")):
                        break
                    time.sleep(0.2)
                verdict, by, text = served(resp)
                mine = a.addresses()
                task = None if "error" in resp else net.task(sid, resp["hivemesh"]["task_id"])
                if task is None and args.concurrency == 1:  # a failed task: the session's newest is this one
                    latest = net.http.get(f"/api/v1/sessions/{sid}/tasks", params={"limit": 1}).json()["data"]
                    task = net.task(sid, latest[0]["id"]) if latest else None
                ref = None
                if task is not None and verdict == "verified" and by in mine and not by_log:
                    ref = net.reference(prompt_of(i), temperature=temperature, seed=1000 + i, exclude=mine)
                with lock:
                    net.rotate_quarantined()  # a quarantined attacker rejoins under a fresh identity
                    row["tasks"] += 1
                    row["verdicts"][verdict] = row["verdicts"].get(verdict, 0) + 1
                    if "error" in resp:
                        row.setdefault("errors", []).append(resp["error"][:160])
                    if task is None:
                        return
                    gens = generators_of(task)
                    if gens and gens[0] in mine:
                        row["claims"] += 1
                        row["unverified"] += int(verdict == "unverified" and by in mine)
                        row["rejected"] += int(
                            any(
                                h.get("phase") == "rejected" and h.get("generator") in mine
                                for h in task["history"]
                            )
                        )
                        if any(
                            h.get("phase") == "fraud" and h.get("generator") in mine for h in task["history"]
                        ):
                            row["caught"] += 1
                    if verdict == "verified" and by in mine:
                        row["attacker_verified"] += 1
                        if by_log and temperature == 0.0 and a.role == "other_model":
                            # no honest generator to ask: the honest model's greedy answer, computed here
                            ref = reference.greedy(prompt_of(i))
                            wrong = ref != text
                        elif by_log:  # no honest generator to ask: the attacker's own log says it cheated
                            wrong = (1000 + i, text) in cheated_outputs(a)  # the seed the task was asked with
                        else:  # no honest reference counts as wrong too: never flattering
                            wrong = ref != text
                        if wrong:
                            row["wrong_verified"] += 1
                            row.setdefault("wrong", []).append(f"{text[:80]!r} vs honest {str(ref)[:80]!r}")
                    if row["tasks"] % 50 == 0:
                        console.print(f"  {row['attack']}: {row['tasks']} tasks, {row['claims']} claims")

            def worker(row: dict[str, Any] = row, counter: Iterator[int] = counter) -> None:
                while row["claims"] < args.tasks_per_attack and row["tasks"] < 8 * args.tasks_per_attack:
                    one(next(counter))

            with ThreadPoolExecutor(args.concurrency) as pool:
                for f in [pool.submit(worker) for _ in range(args.concurrency)]:
                    f.result()
            row["cheated"] = "n/a" if attack == "other_model" else cheated_claims(a)
            row["strikes"] = net.strikes(a.addresses(), ("fraud",)).get("fraud", 0)
            details = net.strike_details({h.address for h in honest}, ("fraud", "false_accusation"))
            row["honest_strikes"] = len(details) - len(seen_strikes)
            row["honest_strike_details"] = [d for d in details if d not in seen_strikes]
            seen_strikes.update(details)
            row["rotations"] = a.rotations
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            console.print(f"  {attack}: {row}")
            net.remove(a)
    finally:
        reference.close()
        net.close()
        procs.stop_all()
    t = Table(
        title=f"(a) detection per attack: 1 attacker among {args.honest} honest miners, v=1, "
        f"max_tokens {args.max_tokens}"
    )
    for col in (
        "attack",
        "tasks",
        "attacker claims",
        "cheated generations (log)",
        "rejected by a verifier",
        "caught (fraud proof)",
        "detection",
        "served unverified (no verifier)",
        "attacker answers verified",
        "wrong answers verified",
        "fraud strikes",
        "rejoined (quarantined)",
        "honest struck",
        "verdicts",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        det = f"{r['rejected'] / r['claims']:.0%}" if r["claims"] else "n/a"
        t.add_row(
            r["attack"],
            str(r["tasks"]),
            str(r["claims"]),
            str(r["cheated"]),
            str(r["rejected"]),
            str(r["caught"]),
            det,
            str(r["unverified"]),
            str(r["attacker_verified"]),
            str(r["wrong_verified"]),
            str(r["strikes"]),
            str(r["rotations"]),
            str(r["honest_strikes"]),
            short(r["verdicts"]),
        )
    console.print(t)
    for r in rows:
        for d in r.get("honest_strike_details", []):
            console.print(f"  honest node struck during {r['attack']}: {d}")
        for e in r.get("errors", []):
            console.print(f"  failed task during {r['attack']}: {e}")
        for w in r.get("wrong", []):
            console.print(f"  wrong answer verified during {r['attack']}: {w}")
    console.print(
        "detection = the attacker's claims rejected by the first verifier / its claims (a rejection confirmed by "
        "the escalation verifiers is a fraud proof and a strike; otherwise the task is regenerated unpunished) "
        "; wrong = a verified answer generated by the attacker that differs from the honest miners' answer "
        "to the same request (a claim that happens to equal it is not a cheat; with no honest generator: "
        "the attacker's log of cheated claims, and for other_model the honest model's greedy answer computed "
        "by the bench)"
    )
    return rows


def part_honest_and_cost(procs: Procs, tmp: Path, args: argparse.Namespace) -> None:
    """(b) false rejections of honest miners (temperature 0 and 0.7, miners on 1 and 2 threads) and (c) cost:
    token v=1 vs k=1 unverified vs k=3 semantic on the same honest miners."""
    net = TokenNet(procs, tmp / "honest", args.max_tokens, semantic=bool(args.cost_rounds))
    try:
        threads = [1, 2, 1, 2][: max(3, args.honest)]
        for i, th in enumerate(threads):
            net.add_honest(f"honest-{i}-t{th}", th)
        if args.honest_tasks:
            _false_rejections(net, args)
        if args.cost_rounds:
            _cost(net, args)
    finally:
        net.close()
        procs.stop_all()


def _false_rejections(net: TokenNet, args: argparse.Namespace) -> None:
    sid = net.session(mode="token", verifiers=1)
    n = {
        "tasks": 0,
        "verified": 0,
        "rejected_checks": 0,
        "checks": 0,
        "exact": 0,
        "fraud": 0,
        "tolerated": 0,
        "tokens": 0,
    }
    by_temp: dict[float, list[int]] = {0.0: [0, 0], 0.7: [0, 0]}
    margins: list[float] = []
    reasons: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def one(i: int) -> None:
        temp = 0.0 if i % 2 == 0 else 0.7
        for _ in range(100):  # every miner busy right now: wait, it is not a rejection
            resp, _ = net.ask(sid, prompt_of(i), temperature=temp, seed=7 + i)
            if "no_miner_available" not in str(resp.get("error", "")):
                break
            time.sleep(0.2)
        task = None if "error" in resp else net.task(sid, resp["hivemesh"]["task_id"])
        with lock:
            tally(i, temp, resp, task)

    def tally(i: int, temp: float, resp: dict[str, Any], task: dict[str, Any] | None) -> None:
        n["tasks"] += 1
        by_temp[temp][0] += 1
        verdict, _, _ = served(resp)
        if verdict == "verified":
            n["verified"] += 1
        if task is None:
            by_temp[temp][1] += 1
            reasons["task failed"] = reasons.get("task failed", 0) + 1
            errors.append(str(resp.get("error"))[:200])
            return
        hm = resp["hivemesh"]
        # every check a verifier sent (first round, escalations, checks of regenerations): the record's history
        evidence = [h for h in task.get("history") or [] if h.get("phase") == "evidence"]
        rejected = [e for e in evidence if not e.get("accepted")]
        n["checks"] += len(evidence)
        n["exact"] += sum(1 for e in evidence if e.get("tolerance") == "exact")
        n["rejected_checks"] += len(rejected)
        n["fraud"] += len(hm.get("fraud_proofs") or [])
        by_temp[temp][1] += int(bool(rejected) or verdict != "verified")
        for e in rejected:
            reasons[str(e.get("reason"))] = reasons.get(str(e.get("reason")), 0) + 1
        for c in (hm.get("evidence") or {}).get("checks") or []:  # the delivered answer's checks
            n["tolerated"] += int(c.get("tolerated") or 0)
            n["tokens"] += int(c.get("checked") or 0)
            margins.append(float(c.get("max_margin") or 0.0))
        if n["tasks"] % 50 == 0:
            console.print(f"  honest: {n['tasks']}/{args.honest_tasks} tasks")

    with ThreadPoolExecutor(args.concurrency) as pool:
        for f in [pool.submit(one, i) for i in range(args.honest_tasks)]:
            f.result()
    t = Table(
        title=f"(b) false rejections: honest miners on 1 and 2 threads, {n['tasks']} tasks "
        f"(temperature 0 and 0.7 alternating), v=1"
    )
    for col in (
        "tasks",
        "verified",
        "checks (exact)",
        "rejected checks",
        "false-rejection rate",
        "fraud proofs",
        "T=0 tasks / not verified",
        "T=0.7 tasks / not verified",
        "tolerated tokens (served answers)",
        "max margin",
    ):
        t.add_column(col, justify="right")
    rate = n["rejected_checks"] / n["checks"] if n["checks"] else float("nan")
    t.add_row(
        str(n["tasks"]),
        str(n["verified"]),
        f"{n['checks']} ({n['exact']})",
        str(n["rejected_checks"]),
        f"{rate:.2%}",
        str(n["fraud"]),
        f"{by_temp[0.0][0]} / {by_temp[0.0][1]}",
        f"{by_temp[0.7][0]} / {by_temp[0.7][1]}",
        f"{n['tolerated']} of {n['tokens']}",
        f"{max(margins, default=0.0):.3f}",
    )
    console.print(t)
    if reasons:
        console.print(f"rejection reasons: {reasons}")
    for e in sorted(set(errors))[:10]:
        console.print(f"  failed task: {e}")


def _cost(net: TokenNet, args: argparse.Namespace) -> None:
    sessions = {
        "k=1 none": net.session(redundancy=1, quorum=1, mode="none"),
        "token v=1": net.session(mode="token", verifiers=1),
        "k=3 semantic": net.session(redundancy=3, quorum=2, mode="semantic"),
    }
    for sid in sessions.values():
        net.ask(sid, "warm up", temperature=0.0, seed=0)
    lat: dict[str, list[float]] = {k: [] for k in sessions}
    cpu: dict[str, float] = {}
    tokens: dict[str, int] = {}
    gen_ms: list[int] = []
    ver_ms: list[int] = []
    verdicts: dict[str, dict[str, int]] = {k: {} for k in sessions}
    for name, sid in sessions.items():
        c0 = net.miner_cpu()
        tok = 0
        for i in range(args.cost_rounds):
            resp, dt = net.ask(sid, prompt_of(i), temperature=0.0, seed=1)
            lat[name].append(dt)
            v = served(resp)[0]
            verdicts[name][v] = verdicts[name].get(v, 0) + 1
            if "error" in resp:
                continue
            tok += int(resp["usage"]["completion_tokens"])
            if name == "token v=1":
                task = net.task(sid, resp["hivemesh"]["task_id"])
                for m in task.get("miners") or []:
                    if m.get("role") == "generator" and m.get("elapsed_ms") is not None:
                        gen_ms.append(int(m["elapsed_ms"]))
                    ev = m.get("evidence") or {}
                    if m.get("role") == "verifier" and ev.get("elapsed_ms") is not None:
                        ver_ms.append(int(ev["elapsed_ms"]))
        time.sleep(0.3)  # let the last verifications land in the CPU counters
        cpu[name] = (net.miner_cpu() - c0) / args.cost_rounds
        tokens[name] = tok
    rps: dict[str, float] = {}
    tps: dict[str, float] = {}
    for name, sid in sessions.items():
        stop = time.perf_counter() + args.duration

        def worker(sid: str = sid, stop: float = stop, name: str = name) -> tuple[int, int]:
            n = tk = 0
            with httpx.Client(
                base_url=net.url, headers={"authorization": f"Bearer {BENCH_KEY}"}, timeout=300
            ) as c:
                while time.perf_counter() < stop:
                    r = c.post(
                        "/v1/chat/completions",
                        headers={"x-hivemesh-session": sid},
                        json={
                            "model": MODEL,
                            "messages": [{"role": "user", "content": prompt_of(n)}],
                            "temperature": 0,
                            "seed": 1,
                            "max_tokens": net.max_tokens,
                        },
                    )
                    if r.status_code == 200:
                        n += 1
                        if name == "k=1 none" or r.json()["hivemesh"]["verdict"] == "verified":
                            tk += int(r.json()["usage"]["completion_tokens"])
            return n, tk

        t0 = time.perf_counter()
        with ThreadPoolExecutor(3) as ex:
            res = list(ex.map(lambda _: worker(), range(3)))
        el = time.perf_counter() - t0
        rps[name] = sum(r[0] for r in res) / el
        tps[name] = sum(r[1] for r in res) / el
    t = Table(
        title=f"(c) cost on the same {len(net.members)} honest miners ({args.cost_rounds} sequential tasks "
        f"each, max_tokens {net.max_tokens}, temperature 0; then {args.duration:.0f} s of 3 clients)"
    )
    for col in (
        "session",
        "latency p50",
        "latency p90",
        "miner CPU / task",
        "tokens / task",
        "requests/s",
        "verified (or k=1) tokens/s",
        "verdicts",
    ):
        t.add_column(col, justify="right")
    for name in sessions:
        s = Summary.of(lat[name])
        t.add_row(
            name,
            f"{s.p50 * 1000:.0f} ms",
            f"{s.p90 * 1000:.0f} ms",
            f"{cpu[name]:.3f} s",
            f"{tokens[name] / max(1, args.cost_rounds):.1f}",
            f"{rps[name]:.2f}",
            f"{tps[name]:.1f}",
            short(verdicts[name]),
        )
    k1, tv, k3 = (Summary.of(lat[k]) for k in sessions)
    t.add_row(
        "token / k=1",
        f"{tv.p50 / k1.p50:.2f}x",
        f"{tv.p90 / k1.p90:.2f}x",
        f"{cpu['token v=1'] / cpu['k=1 none']:.2f}x",
        "",
        f"{rps['token v=1'] / rps['k=1 none']:.2f}x",
        f"{tps['token v=1'] / tps['k=1 none']:.2f}x" if tps["k=1 none"] else "n/a",
        "",
    )
    t.add_row(
        "token / k=3",
        f"{tv.p50 / k3.p50:.2f}x",
        f"{tv.p90 / k3.p90:.2f}x",
        f"{cpu['token v=1'] / cpu['k=3 semantic']:.2f}x",
        "",
        f"{rps['token v=1'] / rps['k=3 semantic']:.2f}x",
        f"{tps['token v=1'] / tps['k=3 semantic']:.2f}x" if tps["k=3 semantic"] else "n/a",
        "",
    )
    console.print(t)
    extra = cpu["token v=1"] - cpu["k=1 none"]
    console.print(
        f"verifier CPU per task (token minus k=1 miner CPU): {extra:.3f} s = "
        f"{extra / cpu['k=1 none']:.0%} of the generation's {cpu['k=1 none']:.3f} s"
    )
    if gen_ms and ver_ms:
        console.print(
            f"from the task records: generator elapsed p50 {Summary.of([float(x) for x in gen_ms]).p50:.0f} ms, "
            f"verifier elapsed p50 {Summary.of([float(x) for x in ver_ms]).p50:.0f} ms "
            f"(ratio {sum(ver_ms) / max(1, sum(gen_ms)):.2f})"
        )


def part_cost_split(args: argparse.Namespace) -> None:
    """(c') Where a verifier's time goes, in-process on one thread: greedy generation vs a cold verification (no
    KV cache of the prompt: a verifier has not seen the prompt) split into the prompt's prefill and the rest (the
    claimed tokens' prefill with logits on every row and the per-row replay of the sampler)."""
    import asyncio

    from hivemesh.engines.base import GenerationRequest, Piece, VerifyRequest
    from hivemesh.engines.llamacpp import LlamaCppEngine
    from hivemesh.protocol.wire import ChatMessage, SamplingParams

    rows: list[tuple[int, int, float, float, float]] = []

    def cold(eng: LlamaCppEngine) -> None:
        """Forget the KV cache: the next pass computes the prompt, as a verifier that never saw it does."""
        eng._llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        eng._llm.reset()

    async def run() -> None:
        eng = LlamaCppEngine(n_threads=1)
        await eng.start()
        try:
            for i in range(args.split_tasks):
                req = GenerationRequest(
                    model=MODEL,
                    kind="chat",
                    params=SamplingParams(temperature=0.0, seed=1, max_tokens=args.split_max_tokens),
                    messages=(ChatMessage(role="user", content=prompt_of(i)),),
                )
                cold(eng)
                c0 = time.process_time()
                parts, fin = [], None
                async for ev in eng.generate(req):
                    if isinstance(ev, Piece):
                        parts.append(ev.text)
                    else:
                        fin = ev
                gen = time.process_time() - c0
                assert fin is not None
                cold(eng)
                c0 = time.process_time()
                await eng.verify(VerifyRequest(req, fin.tokens, "".join(parts), fin.finish_reason))
                ver = time.process_time() - c0
                prompt, _ = eng._prompt_tokens(req)
                cold(eng)
                c0 = time.process_time()
                await asyncio.to_thread(eng._llm.eval, prompt)
                pre = time.process_time() - c0
                rows.append((len(prompt), len(fin.tokens), gen, ver, pre))
        finally:
            await eng.close()

    asyncio.run(run())
    gen = sum(r[2] for r in rows)
    ver = sum(r[3] for r in rows)
    pre = sum(r[4] for r in rows)
    pt = sum(r[0] for r in rows)
    ct = sum(r[1] for r in rows)
    t = Table(
        title=f"(c') verifier vs generator CPU in-process, 1 thread, {len(rows)} greedy answers "
        f"(max_tokens {args.split_max_tokens}; {pt / len(rows):.0f} prompt + {ct / len(rows):.0f} answer tokens each)"
    )
    for col in ("what", "CPU / task", "share of generation", "per token"):
        t.add_column(col, justify="right")
    n = len(rows)
    t.add_row("generation (prompt prefill + decode)", f"{gen / n:.3f} s", "100%", f"{gen / ct * 1000:.1f} ms")
    t.add_row(
        "verification, cold", f"{ver / n:.3f} s", f"{ver / gen:.0%}", f"{ver / (pt + ct) * 1000:.1f} ms"
    )
    t.add_row(
        "  of which the prompt's prefill", f"{pre / n:.3f} s", f"{pre / gen:.0%}", f"{pre / pt * 1000:.1f} ms"
    )
    t.add_row(
        "  of which the answer (prefill, logits, sampler replay)",
        f"{(ver - pre) / n:.3f} s",
        f"{(ver - pre) / gen:.0%}",
        f"{(ver - pre) / ct * 1000:.1f} ms",
    )
    console.print(t)


def part_collusion(procs: Procs, tmp: Path, args: argparse.Namespace) -> None:
    """(d) s sybils (swap generators that accept everything as verifiers) among h honest miners, v = 1, 2, 3:
    a fresh network for each (s, v), so no reputation carries over."""
    from hivemesh.core.verdict import p_all_sybil

    rows = []
    h = args.collusion_honest
    for s in args.sybils:
        for v in (1, 2, 3):
            if v > s - 1 + h:
                continue
            net = TokenNet(procs, tmp / f"collusion-{s}-{v}", args.max_tokens, verifiers=v)
            try:
                honest = [net.add_honest(f"honest-{i}", 1) for i in range(h)]
                sybils = [
                    net.add_attacker(f"sybil-{j}", "swap", "accept_all", role="sybil") for j in range(s)
                ]
                try:
                    sid = net.session(mode="token", verifiers=v)
                except SystemExit as exc:
                    console.print(f"[yellow]  collusion v={v} skipped: {exc}")
                    continue
                r = {"s": s, "h": h, "v": v, "tasks": 0, "sybil_claims": 0, "wrong": 0, "sybil_first": 0}
                for i in range(args.collusion_tasks):
                    resp, _ = net.ask(sid, prompt_of(i), temperature=0.0, seed=500 + i)
                    r["tasks"] += 1
                    verdict, by, text = served(resp)
                    if "error" in resp:
                        continue
                    task = net.task(sid, resp["hivemesh"]["task_id"])
                    gens = generators_of(task)
                    mine = set().union(*(m.addresses() for m in sybils))
                    if gens and gens[0] in mine:
                        r["sybil_first"] += 1
                    r["sybil_claims"] += sum(1 for g in gens if g in mine)
                    if verdict == "verified" and by in mine:
                        ref = net.reference(prompt_of(i), temperature=0.0, seed=500 + i, exclude=mine)
                        r["wrong"] += int(ref != text)
                    net.rotate_quarantined()
                r["p"] = p_all_sybil(s, h, v)
                r["honest_struck"] = sum(
                    n
                    for hm in honest
                    for n in net.strikes({hm.address}, ("fraud", "false_accusation")).values()
                )
                r["rotations"] = sum(m.rotations for m in sybils)
                rows.append(r)
                console.print(f"  collusion: {r}")
            finally:
                net.close()
                procs.stop_all()
    t = Table(title=f"(d) collusion: s sybils (swap generator + accept-all verifier) among {h} honest miners")
    for col in (
        "s",
        "h",
        "v",
        "tasks",
        "sybil claims",
        "wrong but verified",
        "share of tasks",
        "share of sybil claims",
        "P(all v verifiers sybil)",
        "honest struck",
        "sybil rejoins",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["s"]),
            str(r["h"]),
            str(r["v"]),
            str(r["tasks"]),
            str(r["sybil_claims"]),
            str(r["wrong"]),
            f"{r['wrong'] / max(1, r['tasks']):.1%}",
            f"{r['wrong'] / r['sybil_claims']:.1%}" if r["sybil_claims"] else "n/a",
            f"{r['p']:.1%}",
            str(r["honest_struck"]),
            str(r["rotations"]),
        )
    console.print(t)


def run_token(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hm-token-bench-") as d, Procs(Path(d)) as procs:
        tmp = Path(d)
        if args.model_cache:
            (tmp / "models").symlink_to(Path(args.model_cache).resolve(), target_is_directory=True)
        t0 = time.perf_counter()
        if "attacks" in args.only:
            part_attacks(procs, tmp, args)
        if "honest" in args.only or "cost" in args.only:
            if "honest" not in args.only:
                args.honest_tasks = 0
            if "cost" not in args.only:
                args.cost_rounds = 0
            part_honest_and_cost(procs, tmp, args)
        if "split" in args.only:
            part_cost_split(args)
        if "collusion" in args.only:
            part_collusion(procs, tmp, args)
        console.print(f"token part: {time.perf_counter() - t0:.0f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part",
        choices=("token", "voting"),
        default="token",
        help="token: token-level verification (a-d); voting: the k=3 redundancy parts 1-3",
    )
    ap.add_argument("--tasks", type=int, default=200, help="voting: real tasks for the detection part")
    ap.add_argument("--garbage", type=int, default=1, help="voting: garbage miners among the 3 honest ones")
    ap.add_argument(
        "--rounds", type=int, default=12, help="voting: sequential requests per session in part 1"
    )
    ap.add_argument(
        "--screenshot", help="voting: save a PNG of the dashboard after the detection run (Debian chromium)"
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of closed-loop load per session")
    # token part
    ap.add_argument(
        "--only",
        default="attacks,honest,cost,split,collusion",
        help="token: which parts to run (attacks, honest, cost, split, collusion)",
    )
    ap.add_argument("--split-tasks", type=int, default=6, help="token: answers in the in-process cost split")
    ap.add_argument("--split-max-tokens", type=int, default=128, help="token: their max_tokens")
    ap.add_argument(
        "--attacks",
        default="swap,near_tie,runner_up,sampled,ignore_seed,truncate,garbage,other_model",
        help="token: attacks to run in (a)",
    )
    ap.add_argument(
        "--tasks-per-attack",
        type=int,
        default=3,
        help="token: attacker-generated claims per attack in (a) (full run: 300)",
    )
    ap.add_argument("--honest", type=int, default=3, help="token: honest miners beside the attacker in (a)")
    ap.add_argument(
        "--honest-generators",
        type=int,
        help="token: how many of (a)'s honest miners may generate (the others only verify, so the attacker "
        "generates most tasks; default: all)",
    )
    ap.add_argument(
        "--concurrency", type=int, default=1, help="token: requests in flight at once in (a) and (b)"
    )
    ap.add_argument("--honest-tasks", type=int, default=30, help="token: tasks in (b) (full run: 1000)")
    ap.add_argument("--cost-rounds", type=int, default=6, help="token: sequential tasks per session in (c)")
    ap.add_argument("--sybils", default="2,3", help="token: sybil counts s in (d)")
    ap.add_argument("--collusion-honest", type=int, default=3, help="token: honest miners h in (d)")
    ap.add_argument("--collusion-tasks", type=int, default=6, help="token: tasks per (s, v) in (d)")
    ap.add_argument(
        "--max-tokens", type=int, default=48, help="token: max_tokens of every task (full run: 128)"
    )
    ap.add_argument("--model-cache", help="token: a directory that keeps the perturbed GGUF between runs")
    ap.add_argument(
        "--honest-cli", action="store_true", help="token: honest miners as `hivemesh miner` processes"
    )
    args = ap.parse_args()
    warn_if_busy()
    if args.part == "token":
        global HONEST_CLI
        HONEST_CLI = args.honest_cli
        args.only = {p.strip() for p in args.only.split(",") if p.strip()}
        args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
        args.sybils = [int(x) for x in args.sybils.split(",") if x.strip()]
        return run_token(args)
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
