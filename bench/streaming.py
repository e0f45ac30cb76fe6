"""Streaming through the network vs the embedded engine called directly: time to first token and tokens/s.

The same model (SmolLM2-135M-Instruct via ``hivemesh.engines.llamacpp.LlamaCppEngine``), the same prompts, seed
and ``temperature=0``, the same llama.cpp ``--threads``:

* direct: the engine in this process, ``engine.generate()`` iterated on an event loop;
* network: router (k=1, mode none, --no-semantic) + one ``--engine llama`` miner, each its own process, called
  with the official ``openai`` SDK (``stream=True``, ``stream_options={"include_usage": True}``).

Runs alternate direct / network (prompt by prompt) so drift and cache effects hit both alike. TTFT is measured
to the first non-empty text; token counts are the engine's own usage (network: the final usage chunk).
tokens/s: ``decode`` = (tokens-1) / (last token - first token); ``end-to-end`` = tokens / (last token - request).
Besides the medians of each path, the medians of the per-pair differences/ratios are shown (more robust on a
shared machine), and the CPU each process spent per token (router, miner vs direct engine, client).

    python -m bench.streaming [--threads 2] [--runs 9] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from bench._common import (
    BENCH_KEY,
    Procs,
    StartupFailed,
    Summary,
    console,
    free_port,
    hivemesh_argv,
    ms,
    profile_tables,
    py_spy,
    router_data_dir,
    wait_healthz,
    warn_if_busy,
)

HOST = "127.0.0.1"
TTFT_TARGET_MS = 10.0
RATIO_TARGET = 0.95

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle works to a ten-year-old.",
    "List some tips for staying focused while studying, with a sentence on each.",
]
SYSTEM = "You are a helpful assistant."


@dataclass
class Run:
    path: str  # direct | network
    prompt: int
    ttft_ms: float
    total_s: float  # request -> last token
    decode_s: float  # first token -> last token
    tokens: int
    text: str

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 and self.tokens > 1 else float("nan")

    @property
    def e2e_tps(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else float("nan")


async def direct_once(engine: Any, prompt: str, seed: int, max_tokens: int, idx: int) -> Run:
    from hivemesh.engines.base import Finished, GenerationRequest, Piece
    from hivemesh.protocol.wire import ChatMessage, SamplingParams

    req = GenerationRequest(
        model=engine.model_id,
        kind="chat",
        params=SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=seed),
        messages=(ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=prompt)),
    )
    t0 = time.perf_counter()
    first = last = None
    parts: list[str] = []
    tokens = 0
    async for ev in engine.generate(req):
        if isinstance(ev, Piece) and ev.text:
            last = time.perf_counter()
            if first is None:
                first = last
            parts.append(ev.text)
        elif isinstance(ev, Finished):
            tokens = ev.usage.completion_tokens
    assert first is not None and last is not None, "the engine produced no text"
    return Run("direct", idx, (first - t0) * 1000, last - t0, last - first, tokens, "".join(parts))


def network_once(client: Any, model: str, prompt: str, seed: int, max_tokens: int, idx: int) -> Run:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        temperature=0,
        seed=seed,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    first = last = None
    parts: list[str] = []
    tokens = 0
    for chunk in stream:
        if chunk.choices:
            text = chunk.choices[0].delta.content
            if text:
                last = time.perf_counter()
                if first is None:
                    first = last
                parts.append(text)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    assert first is not None and last is not None, "the network produced no text"
    return Run("network", idx, (first - t0) * 1000, last - t0, last - first, tokens, "".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads, both paths")
    ap.add_argument("--runs", type=int, default=9, help="measured runs per path (prompts cycle)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs per path first")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for an idle machine",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, py-spy the router and miner over a few network runs",
    )
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's collapsed stacks here")
    args = ap.parse_args()

    import openai
    import uvloop

    from hivemesh.engines.llamacpp import DEFAULT_MODEL_ID, LlamaCppEngine

    busy = warn_if_busy(wait=args.wait_quiet)
    runs: list[Run] = []
    profiles: list[tuple[str, Path]] = []
    prof_tables: list[Table] = []
    cpu = {
        "direct (this process)": 0.0,
        "router": 0.0,
        "miner": 0.0,
        "client (openai SDK, this process)": 0.0,
    }
    with (
        tempfile.TemporaryDirectory(prefix="hivemesh-bench-") as tmp_s,
        Procs(Path(tmp_s)) as procs,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop,
    ):
        tmp = Path(tmp_s)
        engine = LlamaCppEngine(n_threads=args.threads)
        try:
            t0 = time.monotonic()
            rport = free_port()
            router_args = ["--port", str(rport), "--data-dir", str(router_data_dir(tmp / "router"))]
            router = procs.start(
                "router",
                hivemesh_argv(
                    "router",
                    "--host",
                    HOST,
                    *router_args,
                    "-k",
                    "1",
                    "-m",
                    "1",
                    "--mode",
                    "none",
                    "--no-semantic",
                ),
            )
            wait_healthz(HOST, rport, [router])
            miner = procs.start(
                "miner",
                hivemesh_argv(
                    "miner", "--router", f"http://{HOST}:{rport}", "--engine", "llama",
                    "--threads", str(args.threads), "--data-dir", str(tmp / "miner"),
                ),
            )  # fmt: skip
            loop.run(engine.start())  # loads while the miner loads
            wait_healthz(HOST, rport, [router, miner], min_miners=1, timeout=180)
            console.print(
                f"router + llama miner + direct engine ready in {time.monotonic() - t0:.1f}s "
                f"(threads={args.threads}, model {DEFAULT_MODEL_ID})"
            )
            client = openai.OpenAI(
                base_url=f"http://{HOST}:{rport}/v1", api_key=BENCH_KEY, max_retries=0, timeout=120
            )

            def one(i: int, measured: bool) -> None:
                """Both paths on the same prompt; which goes first alternates with i."""
                k = i % len(PROMPTS)
                res: dict[str, Run] = {}
                for path in ("direct", "network") if i % 2 else ("network", "direct"):
                    c0, r0, m0 = time.process_time(), router.cpu_seconds(), miner.cpu_seconds()
                    if path == "direct":
                        res[path] = loop.run(direct_once(engine, PROMPTS[k], args.seed, args.max_tokens, k))
                    else:
                        res[path] = network_once(
                            client, DEFAULT_MODEL_ID, PROMPTS[k], args.seed, args.max_tokens, k
                        )
                    if measured and path == "direct":
                        cpu["direct (this process)"] += time.process_time() - c0
                    elif measured:
                        cpu["client (openai SDK, this process)"] += time.process_time() - c0
                        cpu["router"] += router.cpu_seconds() - r0
                        cpu["miner"] += miner.cpu_seconds() - m0
                d, n = res["direct"], res["network"]
                same = "same text" if d.text == n.text else "[yellow]TEXT DIFFERS"
                tag = f"run {i + 1}" if measured else "warm-up"
                console.print(
                    f"  {tag}: direct ttft {d.ttft_ms:6.1f} ms {d.decode_tps:6.1f} tok/s | network ttft "
                    f"{n.ttft_ms:6.1f} ms {n.decode_tps:6.1f} tok/s | {d.tokens}/{n.tokens} tokens, {same}"
                )
                if measured:
                    runs.extend((d, n))

            for i in range(args.warmup):
                one(i, measured=False)
            for i in range(args.runs):
                one(i, measured=True)
            for p in (router, miner):
                if not p.alive():
                    console.print(f"[red]{p.name} died:\n{p.tail()}")
            if args.profile:
                out = args.profile_out or tmp / "profile"
                out.mkdir(parents=True, exist_ok=True)
                console.print(
                    f"profiling router and miner over {args.profile_runs} network runs (py-spy) ..."
                )
                with py_spy(router.pid, out / "router.txt"), py_spy(miner.pid, out / "miner.txt"):
                    for i in range(args.profile_runs):
                        k = i % len(PROMPTS)
                        network_once(client, DEFAULT_MODEL_ID, PROMPTS[k], args.seed, args.max_tokens, k)
                for name in ("router", "miner"):
                    f = out / f"{name}.txt"
                    if f.exists() and f.stat().st_size:
                        profiles.append((name, f))
                        prof_tables.extend(profile_tables(name, f))
        except StartupFailed as exc:
            console.print(f"[red]startup failed: {exc}")
            return 2
        finally:
            procs.stop_all()
            loop.run(engine.close())

    d = [r for r in runs if r.path == "direct"]
    n = [r for r in runs if r.path == "network"]
    dt_ttft, nt_ttft = Summary.of([r.ttft_ms for r in d]), Summary.of([r.ttft_ms for r in n])
    dt_dec, nt_dec = Summary.of([r.decode_tps for r in d]), Summary.of([r.decode_tps for r in n])
    dt_e2e, nt_e2e = Summary.of([r.e2e_tps for r in d]), Summary.of([r.e2e_tps for r in n])
    pair_ttft = Summary.of([b.ttft_ms - a.ttft_ms for a, b in zip(d, n, strict=True)])
    pair_dec = Summary.of([b.decode_tps / a.decode_tps for a, b in zip(d, n, strict=True)])
    pair_e2e = Summary.of([b.e2e_tps / a.e2e_tps for a, b in zip(d, n, strict=True)])
    same = sum(1 for a, b in zip(d, n, strict=True) if a.text == b.text and a.tokens == b.tokens)

    tb = Table(
        title=f"streaming, SmolLM2-135M-Instruct, threads={args.threads}, max_tokens={args.max_tokens}, "
        f"temperature 0, {len(d)} runs per path"
    )
    for col in (
        "metric",
        "direct (in-process)",
        "network (router+miner, openai SDK)",
        "added / ratio",
        "paired p50",
    ):
        tb.add_column(col, justify="left" if col == "metric" else "right")
    tb.add_row(
        "TTFT p50 (ms)", ms(dt_ttft.p50, 1), ms(nt_ttft.p50, 1), f"{nt_ttft.p50 - dt_ttft.p50:+.1f} ms",
        f"{pair_ttft.p50:+.1f} ms",
    )  # fmt: skip
    tb.add_row(
        "TTFT p90 (ms)", ms(dt_ttft.p90, 1), ms(nt_ttft.p90, 1), f"{nt_ttft.p90 - dt_ttft.p90:+.1f} ms", ""
    )
    tb.add_row(
        "decode tokens/s p50", f"{dt_dec.p50:.1f}", f"{nt_dec.p50:.1f}", f"{nt_dec.p50 / dt_dec.p50:.3f}",
        f"{pair_dec.p50:.3f}",
    )  # fmt: skip
    tb.add_row(
        "end-to-end tokens/s p50", f"{dt_e2e.p50:.1f}", f"{nt_e2e.p50:.1f}", f"{nt_e2e.p50 / dt_e2e.p50:.3f}",
        f"{pair_e2e.p50:.3f}",
    )  # fmt: skip
    tb.add_row(
        "completion tokens (mean)",
        f"{sum(r.tokens for r in d) / max(1, len(d)):.1f}",
        f"{sum(r.tokens for r in n) / max(1, len(n)):.1f}",
        f"identical output {same}/{len(d)}",
        "",
    )
    console.print(tb)

    tokens_d = max(1, sum(r.tokens for r in d))
    tokens_n = max(1, sum(r.tokens for r in n))
    ct = Table(title="CPU per generated token (all measured runs)")
    ct.add_column("process")
    ct.add_column("CPU ms / token", justify="right")
    for name, sec in cpu.items():
        ct.add_row(name, f"{sec * 1000 / (tokens_d if name.startswith('direct') else tokens_n):.2f}")
    overhead = (cpu["router"] + cpu["miner"] + cpu["client (openai SDK, this process)"]) / tokens_n - cpu[
        "direct (this process)"
    ] / tokens_d
    ct.add_row("network extra (router + miner + client - direct)", f"{overhead * 1000:+.2f}")
    console.print(ct)

    added = nt_ttft.p50 - dt_ttft.p50
    ratio = nt_dec.p50 / dt_dec.p50
    verdict = Table(title="targets (medians of each path; paired medians in brackets)")
    for col in ("metric", "measured", "target", "met"):
        verdict.add_column(col, justify="left" if col == "metric" else "right")
    verdict.add_row(
        "network / direct tokens/s (decode)",
        f"{ratio:.3f} [{pair_dec.p50:.3f}]",
        f"≥ {RATIO_TARGET}",
        "yes" if ratio >= RATIO_TARGET else "NO",
    )
    verdict.add_row(
        "added TTFT",
        f"{added:+.1f} ms [{pair_ttft.p50:+.1f}]",
        f"≤ {TTFT_TARGET_MS:.0f} ms",
        "yes" if added <= TTFT_TARGET_MS else "NO",
    )
    console.print(verdict)
    for t in prof_tables:
        console.print(t)
    if profiles and args.profile_out:
        console.print(f"collapsed stacks kept in {args.profile_out}")

    if args.json:
        out = {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "machine_busy_before_pct": busy,
            "ttft_ms": {"direct": vars(dt_ttft), "network": vars(nt_ttft), "paired_added": vars(pair_ttft)},
            "decode_tps": {"direct": vars(dt_dec), "network": vars(nt_dec), "paired_ratio": vars(pair_dec)},
            "e2e_tps": {"direct": vars(dt_e2e), "network": vars(nt_e2e), "paired_ratio": vars(pair_e2e)},
            "cpu_ms_per_token": {
                k: v * 1000 / (tokens_d if k.startswith("direct") else tokens_n) for k, v in cpu.items()
            },
            "identical": same,
            "runs": len(d),
            "targets_met": {"ratio": ratio >= RATIO_TARGET, "ttft": added <= TTFT_TARGET_MS},
        }
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
