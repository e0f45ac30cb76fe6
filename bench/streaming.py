"""Streaming through the network vs the embedded engine called directly: time to first token and tokens/s.

The same model (SmolLM2-135M-Instruct via ``hivemesh.engines.llamacpp.LlamaCppEngine``), the same prompts, seed
and ``temperature=0``, the same llama.cpp ``--threads``:

* direct: the engine in this process, ``engine.generate()`` iterated on an event loop;
* network: router (k=1, mode none, --no-semantic) + one ``--engine llama`` miner, each its own process, called
  with the official ``openai`` SDK (``stream=True``, ``stream_options={"include_usage": True}``).

Runs alternate direct / network (prompt by prompt) so drift and cache effects hit both alike. TTFT is measured
to the first non-empty text; token counts are the engine's own usage (network: the final usage chunk).
tokens/s: ``decode`` = (tokens-1) / (last token - first token); ``end-to-end`` = tokens / (last token - request).

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
    Procs,
    StartupFailed,
    Summary,
    console,
    free_port,
    hivemesh_argv,
    ms,
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
    args = ap.parse_args()

    import openai
    import uvloop

    from hivemesh.engines.llamacpp import DEFAULT_MODEL_ID, LlamaCppEngine

    busy = warn_if_busy()
    runs: list[Run] = []
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
            router = procs.start(
                "router",
                hivemesh_argv(
                    "router",
                    "--host",
                    HOST,
                    "--port",
                    str(rport),
                    "--data-dir",
                    str(router_data_dir(tmp / "router")),
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
                    "miner",
                    "--router",
                    f"http://{HOST}:{rport}",
                    "--engine",
                    "llama",
                    "--threads",
                    str(args.threads),
                    "--data-dir",
                    str(tmp / "miner"),
                ),
            )
            loop.run(engine.start())  # loads while the miner loads
            wait_healthz(HOST, rport, [router, miner], min_miners=1, timeout=180)
            console.print(
                f"router + llama miner + direct engine ready in {time.monotonic() - t0:.1f}s "
                f"(threads={args.threads}, model {DEFAULT_MODEL_ID})"
            )
            client = openai.OpenAI(
                base_url=f"http://{HOST}:{rport}/v1", api_key="sk-bench", max_retries=0, timeout=120
            )

            def one(i: int, measured: bool) -> None:
                """Both paths on the same prompt; which goes first alternates with i."""
                k = i % len(PROMPTS)
                res: dict[str, Run] = {}
                for path in ("direct", "network") if i % 2 else ("network", "direct"):
                    if path == "direct":
                        res[path] = loop.run(direct_once(engine, PROMPTS[k], args.seed, args.max_tokens, k))
                    else:
                        res[path] = network_once(
                            client, DEFAULT_MODEL_ID, PROMPTS[k], args.seed, args.max_tokens, k
                        )
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
    same = sum(1 for a, b in zip(d, n, strict=True) if a.text == b.text and a.tokens == b.tokens)

    tb = Table(
        title=f"streaming, SmolLM2-135M-Instruct, threads={args.threads}, max_tokens={args.max_tokens}, "
        f"temperature 0, {len(d)} runs per path (p50 unless noted)"
    )
    for col in ("metric", "direct (in-process)", "network (router+miner, openai SDK)", "added / ratio"):
        tb.add_column(col, justify="left" if col == "metric" else "right")
    tb.add_row(
        "TTFT p50 (ms)", ms(dt_ttft.p50, 1), ms(nt_ttft.p50, 1), f"+{nt_ttft.p50 - dt_ttft.p50:.1f} ms"
    )
    tb.add_row(
        "TTFT p90 (ms)", ms(dt_ttft.p90, 1), ms(nt_ttft.p90, 1), f"+{nt_ttft.p90 - dt_ttft.p90:.1f} ms"
    )
    tb.add_row(
        "decode tokens/s p50", f"{dt_dec.p50:.1f}", f"{nt_dec.p50:.1f}", f"{nt_dec.p50 / dt_dec.p50:.3f}"
    )
    tb.add_row(
        "end-to-end tokens/s p50", f"{dt_e2e.p50:.1f}", f"{nt_e2e.p50:.1f}", f"{nt_e2e.p50 / dt_e2e.p50:.3f}"
    )
    tb.add_row(
        "completion tokens (mean)",
        f"{sum(r.tokens for r in d) / max(1, len(d)):.1f}",
        f"{sum(r.tokens for r in n) / max(1, len(n)):.1f}",
        f"identical output {same}/{len(d)}",
    )
    console.print(tb)

    added = nt_ttft.p50 - dt_ttft.p50
    ratio = nt_dec.p50 / dt_dec.p50
    verdict = Table(title="targets")
    for col in ("metric", "measured", "target", "met"):
        verdict.add_column(col, justify="left" if col == "metric" else "right")
    verdict.add_row(
        "network / direct tokens/s (decode, p50)",
        f"{ratio:.3f}",
        f"≥ {RATIO_TARGET}",
        "yes" if ratio >= RATIO_TARGET else "NO",
    )
    verdict.add_row(
        "added TTFT p50",
        f"{added:.1f} ms",
        f"≤ {TTFT_TARGET_MS:.0f} ms",
        "yes" if added <= TTFT_TARGET_MS else "NO",
    )
    console.print(verdict)

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now().isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(),
                    "threads": args.threads,
                    "ttft_ms": {"direct": vars(dt_ttft), "network": vars(nt_ttft)},
                    "decode_tps": {"direct": vars(dt_dec), "network": vars(nt_dec)},
                    "e2e_tps": {"direct": vars(dt_e2e), "network": vars(nt_e2e)},
                    "identical": same,
                    "runs": len(d),
                    "machine_busy_before_pct": busy,
                    "targets_met": {"ratio": ratio >= RATIO_TARGET, "ttft": added <= TTFT_TARGET_MS},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
