"""Selection cost: drawing k nodes by the seeded weighted shuffle, ``rank`` (every node, every task) against the
pool index (``PoolIndex``: a live snapshot, k lazy descents), in-process.

For each size the pool is the same: random scores, capacities 1-4, a tenth of the nodes new. ``rank`` is timed as
the runners call it today (build the candidates' ranking, read the first k); the index as they would (snapshot,
draw, read the first k), plus one ``put`` (what a reserve or a release costs it).

    python -m bench.selection --sizes 1000 10000 100000 -k 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from rich.table import Table

from bench._common import console
from hivemesh.core.pool_index import PoolIndex
from hivemesh.core.selection import Candidate, rank
from hivemesh.protocol.wire import NodeId


def pool(n: int, seed: int = 1) -> list[Candidate]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cap = rng.randint(1, 4)
        record = rng.randint(0, 9) if rng.random() < 0.1 else rng.randint(10, 10_000)
        out.append(Candidate(NodeId(f"0x{i:040x}"), rng.random(), rng.randint(1, cap), cap, record))
    return out


def timed(fn: Callable[[int], object], runs: int, budget_s: float = 10.0) -> float:
    """Median seconds of ``fn(seed)`` over up to ``runs`` calls (fewer if they take longer than ``budget_s``)."""
    times: list[float] = []
    start = time.perf_counter()
    for s in range(runs):
        t = time.perf_counter()
        fn(s)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def measure(n: int, k: int, runs: int) -> tuple[str, ...]:
    cands = pool(n)
    t0 = time.perf_counter()
    idx = PoolIndex(cands)
    build = time.perf_counter() - t0
    rank_s = timed(lambda s: rank(cands, s)[:k], runs)
    draw_s = timed(lambda s: idx.snapshot().draw(s).take(k), runs * 10)
    rng = random.Random(2)

    def put(s: int) -> None:
        c = cands[rng.randrange(n)]
        idx.put(Candidate(c.node, rng.random(), 1, c.capacity, c.record))

    put_s = timed(put, runs * 10)
    return (
        f"{n:,}",
        f"{rank_s * 1e3:.2f} ms",
        f"{draw_s * 1e3:.3f} ms",
        f"{rank_s / draw_s:,.0f}x",
        f"{put_s * 1e6:.0f} µs",
        f"{build:.2f} s",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    k = args.k

    table = Table(title=f"choosing k={k}: median per task")
    for col in ("eligible", "rank", "index draw", "ratio", "index put", "index build"):
        table.add_column(col, justify="right")
    for n in args.sizes:
        table.add_row(*measure(n, k, args.runs))
    console.print(table)


if __name__ == "__main__":
    main()
