"""The session queue: capacity is never exceeded, sessions are served fairly, and queued work survives restarts."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import InstantEngine

from ..conftest import API_KEY, Network

H = {"authorization": f"Bearer {API_KEY}"}


def _submit(net: Network, sid: str, prompt: str, out: list[Any]) -> None:
    r = httpx.post(f"{net.url}/api/v1/completions/{sid}", json={"prompt": prompt}, headers=H, timeout=60)
    out.append((time.monotonic(), prompt, r.status_code))


def test_capacity_is_never_exceeded(network: Network) -> None:
    network.start_router()
    network.add_miner("a", engine_obj=InstantEngine(capacity=2, tokens=5, token_delay_s=0.01))
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            for ln in list(network.service.hub.links.values()):
                peak = max(peak, ln.inflight)
            time.sleep(0.001)

    w = threading.Thread(target=watch)
    w.start()
    c = network.client()
    threads = [
        threading.Thread(target=lambda: c.completions.create(model="instant-echo", prompt="x"))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    w.join()
    assert peak == 2


def test_sessions_are_served_round_robin(network: Network) -> None:
    network.start_router()
    network.add_miner("a", engine_obj=InstantEngine(capacity=1, tokens=4, token_delay_s=0.04))
    with httpx.Client(base_url=network.url + "/api/v1", headers=H) as c:
        busy = c.post("/sessions", json={"redundancy": 1, "quorum": 1, "mode": "none"}).json()["id"]
        quiet = c.post("/sessions", json={"redundancy": 1, "quorum": 1, "mode": "none"}).json()["id"]
    done: list[Any] = []
    threads = [threading.Thread(target=_submit, args=(network, busy, f"busy-{i}", done)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while network.service.scheduler.depth_of(busy) < 6 and time.monotonic() < deadline:
        time.sleep(0.002)
    q = threading.Thread(target=_submit, args=(network, quiet, "quiet", done))
    q.start()
    for t in [*threads, q]:
        t.join(30)
    order = [p for _, p, _ in sorted(done)]
    assert all(code == 200 for _, _, code in done)
    # the quiet session's one task does not wait for the busy session's whole backlog
    assert order.index("quiet") <= 3, order


def test_unfinished_task_is_resumed_after_router_restart(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    network.add_miner("a", engine_obj=InstantEngine(tokens=40, token_delay_s=0.05))
    with httpx.Client(base_url=network.url + "/api/v1", headers=H) as c:
        sid = c.post("/sessions", json={"redundancy": 1, "quorum": 1, "mode": "none"}).json()["id"]
        tid = c.post(f"/completions/{sid}", json={"prompt": "long job", "wait": False}).json()["id"]
    deadline = time.monotonic() + 10
    while not any(ln.inflight for ln in network.service.hub.links.values()) and time.monotonic() < deadline:
        time.sleep(0.005)
    port = int(network.url.rsplit(":", 1)[1])
    network.stop_router()  # the router dies with the task in flight
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"), port=port)
    deadline = time.monotonic() + 30
    task: dict[str, Any] = {}
    with httpx.Client(base_url=network.url + "/api/v1", headers=H) as c:
        while time.monotonic() < deadline:
            task = c.get(f"/tasks/{sid}/{tid}").json()
            if task["phase"] == "ended":
                break
            time.sleep(0.05)
    assert task["phase"] == "ended", task
    assert len(task["answer"].split()) == 40
    assert "recovered" in [h["phase"] for h in task["history"]]
