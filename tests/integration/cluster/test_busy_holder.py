"""A node another router holds may turn out busy when the assignment reaches it (the views of its load are a
quarter-second behind): the task waits for it, as it would for a node of its own, instead of failing.

Load announcements are slowed here so that the router without miners always sees the node free."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import InstantEngine
from hivemesh.router import cluster

from ...conftest import API_KEY, Network, until

MODEL = "instant-echo"
OTHER_KEY = "hm-test-key-other-0123456789"


def _ask(net: Network, key: str, max_tokens: int) -> httpx.Response:
    return httpx.post(
        f"{net.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
        timeout=60,
    )


@pytest.mark.parametrize("mode", ["none", "token"])
def test_a_task_waits_for_a_relayed_node_that_was_busy(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(cluster, "LOAD_S", 60.0)
    a, b = two
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    defaults = SessionDefaults(redundancy=1, quorum=1, mode=mode)  # type: ignore[arg-type]
    for net in (a, b):
        net.start_router(
            database_url=url,
            ledger_url=url,
            cluster_url=redis_url,
            extra_keys=(OTHER_KEY,),
            defaults=defaults,
        )
    for name in ("slow", "v") if mode == "token" else ("slow",):
        b.add_miner(name, engine_obj=InstantEngine(capacity=1, token_delay_s=0.2), capacity=1)
    until(lambda: len(a.service.hub.remote) == len(b.service.hub.links))
    done: dict[str, httpx.Response] = {}

    def busy() -> None:
        done["busy"] = _ask(b, OTHER_KEY, 8)

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    until(lambda: any(link.inflight for link in b.service.hub.links.values()))
    r = _ask(a, API_KEY, 2)  # a sees the node free: its holder answers busy, and the task waits for it
    t.join(30)
    assert r.status_code == 200, r.text
    assert done["busy"].status_code == 200
    out = r.json()["hivemesh"]
    if mode == "token":
        assert out["verdict"] == "verified"  # the verifier it waited for checked it
    con = sqlite3.connect(tmp_path / "shared.db")
    try:
        reasons = [
            json.loads(d).get("reason")
            for (d,) in con.execute(
                "select detail from task_events where task_id = ? and phase = 'slot_failed'",
                (out["task_id"],),
            )
        ]
    finally:
        con.close()
    assert reasons and set(reasons) == {"busy"}  # it did meet a busy holder, and nothing else failed
