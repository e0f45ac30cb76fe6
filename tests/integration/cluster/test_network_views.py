"""Each router of a cluster shows the whole network (two routers on one PostgreSQL and one Redis, real miners).

With one miner on A and two on B, router A's views count all three, each once, with the router holding it:

* ``/api/v1/miners`` lists every node with a ``router`` field (A's address for its own, B's for B's), its models
  and capacity;
* the dashboard's node table and node page show B's nodes online, connected to B (hardware and version from the
  row B wrote to the shared database); the overview counts the network;
* ``/metrics`` splits the miner gauges by ``scope``: local (A's one node) and remote (B's two), summing to three.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ...conftest import API_KEY, Network, until

MODEL = "instant-echo"
H = {"authorization": f"Bearer {API_KEY}"}
pytestmark = pytest.mark.postgres


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    """(metric, state, scope) -> value, for the miner gauges."""
    return {
        (s.name, s.labels["state"], s.labels["scope"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name in ("hivemesh_miners", "hivemesh_miner_slots")
    }


# the servers' fixtures come before ``two``: the routers stop before their database is dropped
@pytest.fixture
def split(pg_database: str, redis_url: str, two: tuple[Network, Network]) -> dict[str, Any]:
    """A and B in one cluster; miner p (capacity 3) on A, q and r (capacity 2 each) on B, seen by both."""
    a, b = two
    for net in (a, b):
        net.start_router(database_url=pg_database, ledger_url=pg_database, cluster_url=redis_url)
    on_a = {a.add_miner("p", capacity=3).identity.address}
    on_b = {b.add_miner(name, capacity=2).identity.address for name in "qr"}
    until(lambda: set(a.service.hub.remote) == on_b and set(b.service.hub.remote) == on_a, timeout=10.0)
    return {"a": a, "b": b, "on_a": on_a, "on_b": on_b}


def test_the_miners_api_lists_every_node_once_with_its_router(split: dict[str, Any]) -> None:
    a, b = split["a"], split["b"]
    holder = {n: a.service.identity.address for n in split["on_a"]}
    holder |= {n: b.service.identity.address for n in split["on_b"]}
    for net in (a, b):  # either router answers for the whole network
        r = httpx.get(f"{net.url}/api/v1/miners", headers=H)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert sorted(m["node"] for m in data) == sorted(holder)  # each node once
        assert {m["node"]: m["router"] for m in data} == holder
        assert {m["node"]: m["capacity"] for m in data} == {n: 3 if n in split["on_a"] else 2 for n in holder}
        assert all(m["models"] == [MODEL] and m["inflight"] == 0 for m in data)
        # hardware, version and connection time come with presence, the same on both routers
        assert all(m["version"] and m["hardware"]["cpus"] > 0 for m in data), data
        status = httpx.get(f"{net.url}/api/v1/status", headers=H).json()
        assert status["miners"] == 3 and status["capacity"] == 7
        assert status["local_miners"] == (1 if net is a else 2)
    by = [
        {m["node"]: m["connected_at"] for m in httpx.get(f"{n.url}/api/v1/miners", headers=H).json()["data"]}
        for n in (a, b)
    ]
    assert by[0] == by[1]  # the holder's time of the connection, not when the other router learned of it


def test_the_dashboard_shows_the_other_routers_nodes_online(split: dict[str, Any]) -> None:
    a, b = split["a"], split["b"]
    b_addr = b.service.identity.address
    with httpx.Client(base_url=a.url, timeout=10) as c:
        rows = {r["node"]: r for r in c.get("/dashboard/api/nodes").json()["data"]}
        assert set(rows) == split["on_a"] | split["on_b"]
        for node in split["on_b"]:
            assert rows[node]["online"] and rows[node]["router"] == b_addr
            assert rows[node]["models"] == [MODEL]
        (mine,) = split["on_a"]
        assert rows[mine]["online"] and rows[mine]["router"] == a.service.identity.address

        node = sorted(split["on_b"])[0]
        page = c.get(f"/dashboard/api/nodes/{node}").json()
        held = b.service.hub.links[node]
        assert page["online"] and page["router"] == b_addr
        assert page["link"]["router"] == b_addr and page["link"]["capacity"] == 2
        # what presence does not carry comes from the row B wrote when the node joined
        assert page["link"]["version"] == held.version != ""
        assert page["link"]["hardware"] == held.hardware.model_dump()

        ov = c.get("/dashboard/api/overview").json()
        assert ov["nodes"]["online"] == 3 and ov["capacity"] == 3 + 2 + 2


def test_metrics_count_the_network_split_by_scope(split: dict[str, Any]) -> None:
    a = split["a"]
    m = _samples(httpx.get(f"{a.url}/metrics").text)
    assert m[("hivemesh_miners", "online", "local")] == 1
    assert m[("hivemesh_miners", "online", "remote")] == 2
    assert m[("hivemesh_miner_slots", "capacity", "local")] == 3
    assert m[("hivemesh_miner_slots", "capacity", "remote")] == 4
    assert m[("hivemesh_miner_slots", "busy", "remote")] == 0
    online = sum(v for (name, state, _), v in m.items() if name == "hivemesh_miners" and state == "online")
    assert online == 3  # one router's series sum to the network
