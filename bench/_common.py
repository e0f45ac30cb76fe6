"""Shared pieces of the benchmarks: subprocesses that always die, readiness polling, lean HTTP clients,
a closed-loop load generator, percentiles, CPU accounting and py-spy summaries."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "150")))
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hivemesh_argv(*args: str) -> list[str]:
    """The ``hivemesh`` CLI of this interpreter's environment (the editable install)."""
    return [sys.executable, "-m", "hivemesh.cli.main", *args]


BENCH_KEY = "sk-bench"


def router_data_dir(path: Path, key: str = BENCH_KEY) -> Path:
    """A fresh router data dir holding ``api_keys.txt`` with the sha256 of ``key``: the router's static (admin,
    unbilled) key, as ``hivemesh up`` makes, so the benchmark needs no ledger account."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "api_keys.txt").write_text(hashlib.sha256(key.encode()).hexdigest() + "\n")
    return path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """user+system CPU of the process (all its threads) so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Procs:
    """Starts subprocesses (each in its own session/process group) and kills every one of them on exit,
    including on errors, Ctrl-C and SIGTERM."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._old_term: Any = None

    def __enter__(self) -> Procs:
        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        self._old_term = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        signal.signal(signal.SIGTERM, self._old_term)

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        log = self.log_dir / f"{name}.log"
        fh = log.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        p = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd or REPO,
            start_new_session=True,
        )
        fh.close()
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own group: the process and anything it spawned
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        else:  # the leader is gone; children it left in its group must go too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep going: every process must be stopped
                console.print(f"[red]could not stop {proc.name} pid={proc.pid}: {exc}")


class StartupFailed(RuntimeError):
    pass


def http_get_json(host: str, port: int, path: str, timeout: float = 2.0) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise OSError(f"GET {path}: HTTP {r.status}")
        return json.loads(data)
    finally:
        conn.close()


def wait_until(
    what: str, check: Callable[[], bool], procs: list[Proc], timeout: float = 60.0, interval: float = 0.05
) -> float:
    """Poll ``check`` until it returns True; fail early if one of ``procs`` died. Returns seconds waited."""
    t0 = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - t0 < timeout:
        for p in procs:
            if not p.alive():
                raise StartupFailed(
                    f"{p.name} exited with code {p.popen.returncode} while waiting for {what}:\n{p.tail()}"
                )
        try:
            if check():
                return time.monotonic() - t0
        except (OSError, ValueError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise StartupFailed(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})\n{tails}")


def wait_healthz(
    host: str, port: int, procs: list[Proc], min_miners: int | None = None, timeout: float = 60.0
) -> float:
    def check() -> bool:
        data = http_get_json(host, port, "/healthz")
        return min_miners is None or int(data.get("miners", 0)) >= min_miners

    return wait_until(
        f"http://{host}:{port}/healthz" + (f" miners>={min_miners}" if min_miners else ""),
        check,
        procs,
        timeout,
    )


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (any process) over ``seconds``, from /proc/stat: run before starting anything, to
    tell whether the figures were taken on a quiet machine."""

    def snap() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals[:8]), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def warn_if_busy(seconds: float = 1.0, limit: float = 10.0, wait: float = 0.0) -> float:
    """Measure how busy the machine is before the benchmark starts; with ``wait`` > 0, first wait up to that many
    seconds for it to be quiet (below ``limit`` % busy over ``seconds``)."""
    deadline = time.monotonic() + wait
    busy = machine_busy(seconds)
    while busy > limit and time.monotonic() < deadline:
        busy = machine_busy(seconds)
    la = os.getloadavg()
    msg = f"machine before start: {busy:.0f}% CPU busy over {seconds:.0f}s, load average {la[0]:.2f} ({os.cpu_count()} CPUs)"
    if busy > limit:
        console.print(f"[yellow]{msg}: other processes are using the CPUs; figures will be noisy and low")
    else:
        console.print(msg)
    return busy


# ---------------------------------------------------------------------------------------------- statistics


def pct(sorted_values: list[float], q: float) -> float:
    """Percentile with linear interpolation (q in [0, 100]) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class Summary:
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        v = sorted(values)
        if not v:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(len(v), pct(v, 50), pct(v, 90), pct(v, 99), sum(v) / len(v), v[0], v[-1])


def ms(x: float, digits: int = 3) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------- clients


def http_request_bytes(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """One pre-encoded HTTP/1.1 keep-alive POST (sent as-is by the load generator)."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


class SeqClient:
    """A lean keep-alive client for one-request-in-flight latency: the standard library's http.client on
    one persistent connection, body pre-encoded, headers fixed. Servers close idle keep-alive connections
    (uvicorn after 5 s): call ``reconnect`` before a timed block that follows a pause."""

    def __init__(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.host, self.port, self.path, self.body = host, port, path, body
        self.headers = {"Content-Type": "application/json", **headers}
        self.conn = http.client.HTTPConnection(host, port, timeout=60)
        self.reconnect()

    def reconnect(self) -> None:
        self.conn.close()
        self.conn.connect()
        assert self.conn.sock is not None
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self) -> tuple[int, bytes, float]:
        """-> (status, body, seconds); status 0 when the connection failed (it is then reopened)."""
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", self.path, body=self.body, headers=self.headers)
            r = self.conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as exc:
            self.reconnect()
            return 0, str(exc).encode(), time.perf_counter() - t0
        dt = time.perf_counter() - t0
        return r.status, data, dt

    def close(self) -> None:
        self.conn.close()


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)  # counted responses by HTTP status

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; parse only the status line and the framing. -> (status, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    i = low.find(b"\r\ncontent-length:")
    if i >= 0:
        j = low.index(b"\r\n", i + 2)
        n = int(low[i + 17 : j])
        if n:
            await reader.readexactly(n)
    elif b"\r\ntransfer-encoding: chunked" in low:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:  # close-delimited
        await reader.read()
        return status, False
    return status, b"\r\nconnection: close" not in low


async def load_async(
    host: str, port: int, request: bytes, concurrency: int, duration: float, warmup: float
) -> LoadResult:
    """Closed loop: ``concurrency`` keep-alive connections, each sending the next request as soon as the
    previous answer is read. Requests that start during the first ``warmup`` seconds are not counted."""
    res = LoadResult()
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    lat = res.latencies_ms
    perf = time.perf_counter
    last_done = [t_measure]

    async def worker() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            now = loop.time()
            if now >= t_end:
                break
            counted = now >= t_measure
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.transport.get_extra_info("socket").setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                    )
                assert reader is not None
                t0 = perf()
                writer.write(request)
                status, keep = await _read_response(reader)
                dt = perf() - t0
                if not keep:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                if counted:
                    res.errors += 1
                    if len(res.error_samples) < 5:
                        res.error_samples.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
                continue
            if not counted:
                continue
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if status == 200:
                res.ok += 1
                lat.append(dt * 1000.0)
                last_done[0] = loop.time()
            else:
                res.errors += 1
                if len(res.error_samples) < 5:
                    res.error_samples.append(f"HTTP {status}")
        if writer is not None:
            writer.close()

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.client_cpu_s = time.process_time() - cpu0
    res.elapsed = (last_done[0] - t_measure) if res.ok else duration
    return res


def run_load(
    host: str, port: int, request: bytes, concurrency: int, duration: float, warmup: float
) -> LoadResult:
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(load_async(host, port, request, concurrency, duration, warmup))


# ---------------------------------------------------------------------------------------------- profiling


@contextlib.contextmanager
def py_spy(
    pid: int, out: Path, duration: float | None = None, rate: int = 250, gil: bool = True
) -> Iterator[subprocess.Popen[bytes] | None]:
    """Record collapsed stacks of ``pid`` (py-spy ``--format raw``) for ``duration`` seconds, or (None) until
    the block ends, if py-spy exists. With ``gil`` only the thread holding the GIL is sampled: the Python CPU
    time, not threads parked in a queue."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        console.print("[yellow]py-spy not found: pip install py-spy (profiling skipped)")
        yield None
        return
    argv = [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(out)]
    if duration is not None:
        argv += ["-d", str(int(duration + 0.999))]
    if gil:
        argv.append("--gil")
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let it attach
        yield p
    finally:
        if duration is None and p.poll() is None:
            p.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            p.wait((duration or 0) + 15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.returncode not in (0, None) and not (out.exists() and out.stat().st_size):
            err = p.stderr.read().decode(errors="replace")[-300:] if p.stderr else ""
            console.print(f"[yellow]py-spy on pid {pid} failed (rc {p.returncode}): {err}")


def _frame_parts(frame: str) -> tuple[str, str, str]:
    """py-spy frame 'func (path/to/file.py:123)' -> (func, short file, line)."""
    func, _, rest = frame.rpartition(" (")
    loc = rest.rstrip(")")
    path, _, line = loc.rpartition(":")
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        k = path.find(marker)
        if k >= 0:
            path = path[k + len(marker) :]
            break
    return func or frame, path, line


def summarize_collapsed(
    path: Path, top: int = 25
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """-> (samples, [(file:line func, self %)], [(file:line func, inclusive %)])."""
    self_t: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        func, file, ln = _frame_parts(frames[-1])
        self_t[f"{file}:{ln} {func}"] += n
        seen: set[str] = set()
        for fr in frames:
            f, fl, fln = _frame_parts(fr)
            key = (
                f"{fl}:{fln} {f}"  # the line in that function that was running (a call site, above the leaf)
            )
            if key not in seen:
                seen.add(key)
                incl[key] += n
    if not total:
        return 0, [], []
    s = sorted(self_t.items(), key=lambda kv: -kv[1])[:top]
    i = sorted(incl.items(), key=lambda kv: -kv[1])
    return total, [(k, 100.0 * v / total) for k, v in s], [(k, 100.0 * v / total) for k, v in i]


# (label, path fragments): a sample goes to the first category any frame of its stack matches
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    (
        "persistence (SQLAlchemy, aiosqlite, hivemesh/store)",
        ("sqlalchemy/", "aiosqlite/", "hivemesh/store/", "sqlite3/"),
    ),
    ("signatures (sign/recover, keccak, checksum)", ("hivemesh/identity", "coincurve/", "eth_", "Crypto/")),
    ("websocket frames (websockets, uvicorn ws)", ("websockets/", "uvicorn/protocols/websockets")),
    ("wire/pydantic models", ("pydantic", "hivemesh/protocol/")),
    (
        "HTTP (uvicorn, starlette, OpenAI handlers)",
        ("uvicorn/", "starlette/", "hivemesh/router/openai_api", "hivemesh/router/app"),
    ),
    ("task run / scheduling logic", ("hivemesh/router/",)),
    ("llama.cpp", ("llama_cpp/",)),
]


def categorize(path: Path) -> tuple[int, list[tuple[str, float]]]:
    counts: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        for label, frags in CATEGORIES:
            if any(f in stack for f in frags):
                counts[label] += n
                break
        else:
            counts["other (event loop, stdlib)"] += n
    if not total:
        return 0, []
    return total, [(k, 100.0 * v / total) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]


def profile_tables(
    name: str,
    path: Path,
    top: int = 20,
    focus: tuple[str, ...] = ("hivemesh/",),
    exclude: tuple[str, ...] = ("hivemesh/cli/", "RouterService.submit.<locals>.drive", "TaskRun.run"),
) -> list[Table]:
    total, selfs, incls = summarize_collapsed(path, top)
    _, cats = categorize(path)
    t0 = Table(title=f"{name}: where the CPU goes (py-spy samples holding the GIL, by category)")
    t0.add_column("%", justify="right")
    t0.add_column("category (first match in the stack, in this order)")
    for k, v in cats:
        t0.add_row(f"{v:.1f}", k)
    t1 = Table(title=f"{name}: hottest lines by self time ({total} samples, py-spy)")
    t1.add_column("self %", justify="right")
    t1.add_column("file:line function")
    for k, v in selfs:
        t1.add_row(f"{v:.1f}", k)
    t2 = Table(title=f"{name}: inclusive time by line in {', '.join(focus)} (call sites of the cost)")
    t2.add_column("incl %", justify="right")
    t2.add_column("file:line function")
    shown = 0
    for k, v in incls:
        if any(f in k for f in focus) and not any(x in k for x in exclude) and shown < top:
            t2.add_row(f"{v:.1f}", k)
            shown += 1
    return [t0, t1, t2]
