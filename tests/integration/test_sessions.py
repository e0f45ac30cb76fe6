"""The Session API, task records with their PoUW history, and durability across a router restart."""

from __future__ import annotations

import httpx
import pytest

from hivemesh.config import SessionDefaults

from ..conftest import API_KEY, Network

MODEL = "instant-echo"
H = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=SessionDefaults(redundancy=3, quorum=2, mode="exact"))
    for name in "abc":
        network.add_miner(name)
    return network


def api(net: Network) -> httpx.Client:
    return httpx.Client(base_url=net.url + "/api/v1", headers=H, timeout=30)


def test_session_lifecycle_and_submission(net: Network) -> None:
    with api(net) as c:
        r = c.post(
            "/sessions",
            json={"name": "mine", "redundancy": 2, "quorum": 2, "mode": "exact", "metadata": {"a": 1}},
        )
        assert r.status_code == 201, r.text
        ses = r.json()
        assert (ses["redundancy"], ses["quorum"], ses["mode"], ses["metadata"]) == (2, 2, "exact", {"a": 1})
        sid = ses["id"]
        assert c.get(f"/sessions/{sid}").json()["name"] == "mine"
        assert sid in [x["id"] for x in c.get("/sessions").json()["data"]]

        r = c.post(f"/completions/{sid}", json={"prompt": "hello world", "max_tokens": 4, "seed": 5})
        assert r.status_code == 200, r.text
        out = r.json()
        tid = out["hivemesh"]["task_id"]
        assert out["hivemesh"]["verdict"] == "verified" and len(out["hivemesh"]["miners"]) == 2

        # the Cortensor-style form with session_id in the body
        r2 = c.post("/completions", json={"session_id": sid, "messages": [{"role": "user", "content": "hi"}]})
        assert r2.status_code == 200 and r2.json()["object"] == "chat.completion"

        tasks = c.get(f"/tasks/{sid}").json()["data"]
        assert {t["id"] for t in tasks} >= {tid}
        task = c.get(f"/tasks/{sid}/{tid}").json()
        assert task["phase"] == "ended" and task["verdict"] == "verified"
        assert task["answer"] == out["choices"][0]["text"]
        phases = [h["phase"] for h in task["history"]]
        for p in ("assigned", "acked", "precommitted", "reveal_requested", "committed", "validated", "ended"):
            assert p in phases, phases
        assert len(task["miners"]) == 2
        for m in task["miners"]:
            assert m["status"] == "committed" and m["in_consensus"] is True
            assert m["precommit"] and m["precommit_at"] <= m["commit_at"]
        # the task row keeps the draw's audit, not every eligible node: the nodes read, in order, and the seed
        # and digest of the eligible set they were drawn from (core.pool_index.replay checks it)
        assert task["candidates"] == [m["node"] for m in sorted(task["miners"], key=lambda m: m["slot"])]
        draw = task["draw"]
        assert draw["taken"] == task["candidates"] and str(draw["seed"]) == task["shuffle_seed"]
        assert draw["eligible"] == len(c.get("/miners").json()["data"]) == 3 and len(draw["digest"]) == 64

        assert c.delete(f"/sessions/{sid}").json()["active"] is False
        r = c.post(f"/completions/{sid}", json={"prompt": "x"})
        assert r.status_code == 400 and "deactivated" in r.json()["error"]["message"]


def test_session_header_routes_openai_calls(net: Network) -> None:
    with api(net) as c:
        sid = c.post("/sessions", json={"redundancy": 1, "quorum": 1, "mode": "none"}).json()["id"]
    r = net.client(default_headers={"x-hivemesh-session": sid}).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    assert r.model_extra["hivemesh"]["session_id"] == sid
    assert r.model_extra["hivemesh"]["verdict"] == "unverified"
    # without the header: the key's default session (k=3, m=2 here)
    d = net.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert d.model_extra["hivemesh"]["session_id"] != sid
    assert d.model_extra["hivemesh"]["verdict"] == "verified"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"redundancy": 2, "quorum": 3}, "quorum"),
        ({"redundancy": 0}, "redundancy"),
        ({"mode": "vibes"}, "mode"),
        ({"threshold": 1.5}, "threshold"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_session_is_400(net: Network, body: dict[str, object], param: str) -> None:
    with api(net) as c:
        r = c.post("/sessions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_unknown_session_and_task_are_404(net: Network) -> None:
    with api(net) as c:
        assert c.get("/sessions/ses_nope").status_code == 404
        sid = c.post("/sessions", json={}).json()["id"]
        r = c.get(f"/tasks/{sid}/task_nope")
        assert r.status_code == 404 and r.json()["error"]["param"] == "task_id"


def test_another_owner_cannot_read_a_session(network: Network) -> None:
    network.start_router(extra_keys=("hm-other",))
    with api(network) as c:
        sid = c.post("/sessions", json={}).json()["id"]
    other = {"authorization": "Bearer hm-other"}
    r = httpx.get(f"{network.url}/api/v1/sessions/{sid}", headers=other)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert sid not in [
        x["id"] for x in httpx.get(f"{network.url}/api/v1/sessions", headers=other).json()["data"]
    ]


def test_info_status_miners(net: Network) -> None:
    with api(net) as c:
        info = c.get("/info").json()
        assert info["models"] == [MODEL] and info["defaults"]["redundancy"] == 3
        status = c.get("/status").json()
        assert status["miners"] == 3 and status["queue_depth"] == 0
        miners = c.get("/miners").json()["data"]
        assert len(miners) == 3 and all(m["models"] == [MODEL] for m in miners)


def test_async_submission_and_finished_task_survive_router_restart(net: Network) -> None:
    with api(net) as c:
        sid = c.post("/sessions", json={"mode": "exact"}).json()["id"]
        done = c.post(f"/completions/{sid}", json={"prompt": "persist me", "seed": 9}).json()
        tid = done["hivemesh"]["task_id"]
        r = c.post(f"/completions/{sid}", json={"prompt": "later", "wait": False})
        assert r.status_code == 202
    port = int(net.url.rsplit(":", 1)[1])
    net.stop_router()
    net.start_router(defaults=SessionDefaults(redundancy=3, quorum=2, mode="exact"), port=port)
    with api(net) as c:
        task = c.get(f"/tasks/{sid}/{tid}").json()
        assert task["phase"] == "ended"
        assert task["answer"] == done["choices"][0]["text"]
        assert task["hivemesh"]["verdict"] == "verified"
        assert len(task["miners"]) == 3
