"""The README's first command, end to end: `hivemesh up` starts a real network that the openai SDK can use."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"


def _read_exports(proc: subprocess.Popen[str], timeout: float) -> dict[str, str]:
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(found) < 2:
        if proc.poll() is not None:
            raise AssertionError(f"hivemesh up exited with {proc.returncode}: see the logs in the data dir")
        if time.monotonic() > deadline:
            raise AssertionError("hivemesh up did not print its exports in time")
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if m := re.match(r"export (OPENAI_BASE_URL|OPENAI_API_KEY)=(\S+)", line):
            found[m.group(1)] = m.group(2)
    return found


@pytest.mark.slow
def test_up_starts_a_verified_network_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # started with SIGINT ignored, as a background job of a non-interactive shell starts it: Ctrl-C must still stop it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hivemesh.cli.main",
                "up",
                "--miners",
                "3",
                "--port",
                "0",
                "--data-dir",
                str(tmp_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        exports = _read_exports(proc, timeout=240)
        client = openai.OpenAI(
            base_url=exports["OPENAI_BASE_URL"], api_key=exports["OPENAI_API_KEY"], max_retries=0
        )
        assert MODEL in [m.id for m in client.models.list()]
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            temperature=0,
            seed=1,
            max_tokens=30,
        )
        assert "Paris" in (r.choices[0].message.content or "")
        block = r.model_extra["hivemesh"]
        # the default: token verification, one generator checked by one other miner
        assert block["mode"] == "token" and block["verdict"] == "verified"
        assert len(block["verifiers"]) == 1 and block["generator"] not in block["verifiers"]
        assert block["evidence"]["checks"][0]["checked"] >= r.usage.completion_tokens
        assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 30

        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Name three colours."}],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=40,
                seed=2,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and chunks[-1].usage is not None
        assert chunks[-1].model_extra["hivemesh"]["verdict"] == "verified"
        # the key is required
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=exports["OPENAI_BASE_URL"], api_key="wrong", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()
    assert code == 0
    assert (tmp_path / "router" / "router.db").exists()
    assert oct((tmp_path / "miners" / "miner-0" / "node.key").stat().st_mode & 0o777) == "0o600"
