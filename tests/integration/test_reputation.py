"""Reputation in a running network: an outvoted node loses score and is quarantined; records survive restarts."""

from __future__ import annotations

import time

from hivemesh.config import SessionDefaults

from ..conftest import Network
from .test_hostile_miners import add_rogue

MODEL = "instant-echo"


def test_a_node_that_keeps_dissenting_is_quarantined_and_skipped(network: Network) -> None:
    defaults = SessionDefaults(redundancy=3, quorum=2, mode="exact")
    network.start_router(defaults=defaults)
    honest = [network.add_miner(f"h{i}").identity.address for i in range(2)]
    rogue = add_rogue(network, "wrong")
    network.wait_miners(3)
    rep = network.service.reputation
    c = network.client()
    for i in range(8):
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])
        assert r.model_extra["hivemesh"]["verdict"] == "verified"
        if rep.is_quarantined(rogue.address):
            break
    deadline = time.monotonic() + 5
    while not rep.is_quarantined(rogue.address) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rep.is_quarantined(rogue.address)
    bad, good = rep.scores(rogue.address), rep.scores(honest[0])
    assert bad.agreement < 0.5 < good.agreement and bad.total < good.total
    events = network.lt.run(network.service.store.node_events(node=rogue.address, kind="quarantined"))
    assert events and "total=" in events[0]["detail"]
    # user work no longer reaches it
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "after"}])
    assert rogue.address not in r.model_extra["hivemesh"]["miners"]
    assert sorted(r.model_extra["hivemesh"]["miners"]) == sorted(honest)

    # the record survives a router restart
    port = int(network.url.rsplit(":", 1)[1])
    network.stop_router()
    network.start_router(defaults=defaults, port=port)
    rep = network.service.reputation
    assert rep.is_quarantined(rogue.address)
    assert rep.window(honest[0]).in_consensus >= 1


def test_a_session_whose_sla_cannot_be_met_gets_503_with_the_reason(network: Network) -> None:
    network.start_router()
    network.add_miner("new")  # level 0: fits "low", not "high"
    import httpx

    from ..conftest import API_KEY

    h = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=network.url + "/api/v1", headers=h) as c:
        high = c.post("/sessions", json={"sla": "high", "redundancy": 1, "quorum": 1, "mode": "none"}).json()[
            "id"
        ]
        low = c.post("/sessions", json={"sla": "low", "redundancy": 1, "quorum": 1, "mode": "none"}).json()[
            "id"
        ]
        r = c.post(f"/completions/{high}", json={"prompt": "x"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "'high' SLA tier needs a miner at level >= 5" in r.json()["error"]["message"]
        assert c.post(f"/completions/{low}", json={"prompt": "x"}).status_code == 200
