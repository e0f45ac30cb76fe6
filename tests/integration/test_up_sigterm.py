"""`hivemesh up` stops the router, miners and validator it started on SIGTERM, as it does on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc: no psutil needed)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_stops_every_process_up_started(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hivemesh.cli.main", "up", "--engine", "instant", "--miners", "2"),
            *("--port", "0", "--data-dir", str(tmp_path), "--mode", "exact", "-k", "2", "-m", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    started: list[int] = []
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:  # blocks until `up` prints its exports: the network is ready then
            if m := re.match(r"export OPENAI_BASE_URL=(\S+)/v1", line):
                url = m.group(1)
            if line.startswith("export OPENAI_API_KEY="):
                break
        assert url, f"hivemesh up exited early with {proc.poll()}"
        started = children_of(proc.pid)
        assert len(started) == 4  # router, 2 miners, validator
        assert httpx.get(url + "/healthz", timeout=5).json()["miners"] == 2

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in started if alive(p)] == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        for pid in started:  # only what this test's `up` started, if it left anything behind
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
