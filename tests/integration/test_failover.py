"""A task survives its miner dying mid-generation: the router swaps in the next node and the user never notices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import InstantEngine
from hivemesh.identity import Identity

from ..conftest import Network

MODEL = "instant-echo"


def _busy_node(net: Network, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [ln.node for ln in list(net.service.hub.links.values()) if ln.inflight]
        if busy:
            return busy[0]
        time.sleep(0.005)
    raise AssertionError("no miner picked the task up")


def test_task_survives_its_miner_being_killed(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    names = {}
    for name in ("a", "b"):
        agent = network.add_miner(name, engine_obj=InstantEngine(tokens=20, token_delay_s=0.05))
        names[agent.identity.address] = name
    result: dict[str, object] = {}

    def ask() -> None:
        result["r"] = network.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "survive"}], seed=4
        )

    t = threading.Thread(target=ask)
    t.start()
    victim = _busy_node(network)
    network.kill_miner(names[victim])
    t.join(30)
    r = result["r"]
    block = r.model_extra["hivemesh"]  # type: ignore[attr-defined]
    assert block["answered_by"] != victim
    assert len(r.choices[0].message.content.split()) == 20  # type: ignore[attr-defined]
    history = network.lt.run(network.service.store.task_events(block["task_id"]))
    failed = [h for h in history if h["phase"] == "slot_failed"]
    assert failed and failed[0]["node"] == victim and failed[0]["detail"]["reason"] == "disconnected"
    assert any(h["phase"] == "swapped" for h in history)


def test_stream_survives_its_leader_being_killed(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=2, quorum=1, mode="exact"))
    names = {}
    for name in ("a", "b"):
        agent = network.add_miner(name, engine_obj=InstantEngine(tokens=30, token_delay_s=0.03))
        names[agent.identity.address] = name
    stream = network.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "keep going"}], seed=11, stream=True
    )
    parts: list[str] = []
    killed = False
    last = None
    for chunk in stream:
        last = chunk
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if len(parts) == 5 and not killed:
            leader = [ln.node for ln in network.service.hub.links.values()]
            run = next(iter(network.service.hub.runs.values()))
            victim = run.leader.node if run.leader else leader[0]
            network.kill_miner(names[victim])
            killed = True
    text = "".join(parts)
    assert killed and len(text.split()) == 30
    assert last is not None and last.model_extra["hivemesh"]["answered_by"] != victim


@pytest.mark.slow
def test_real_miner_process_killed_mid_generation(network: Network, tmp_path: Path) -> None:
    """Real processes, real model: SIGKILL the miner that is generating; the answer still arrives."""
    url = network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(2):
            d = tmp_path / f"m{i}"
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hivemesh.cli.main",
                    "miner",
                    "--router",
                    url,
                    "--data-dir",
                    str(d),
                    "--threads",
                    "1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while not (d / "node.key").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            procs[Identity.load_or_create(d / "node.key").address] = p
        network.wait_miners(2, timeout=120)
        result: dict[str, object] = {}

        def ask() -> None:
            result["r"] = network.client().chat.completions.create(
                model="SmolLM2-135M-Instruct",
                messages=[{"role": "user", "content": "Write a long story about a robot."}],
                max_tokens=120,
                temperature=0,
                seed=1,
            )

        t = threading.Thread(target=ask)
        t.start()
        victim = _busy_node(network, timeout=60)
        os.kill(procs[victim].pid, signal.SIGKILL)
        t.join(120)
        r = result["r"]
        assert r.model_extra["hivemesh"]["answered_by"] != victim  # type: ignore[attr-defined]
        assert r.usage.completion_tokens > 10  # type: ignore[attr-defined]
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_a_stream_that_breaks_ends_with_an_error_event(network: Network) -> None:
    """Nobody left to finish the stream: the client gets an SSE error, never a silent truncated success."""
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    network.add_miner("only", engine_obj=InstantEngine(tokens=40, token_delay_s=0.03))
    stream = network.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "break me"}], stream=True
    )
    got = 0
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
                if got == 3:
                    network.kill_miner("only")
    assert got >= 3
    assert "no miner completed the task" in str(ei.value)
