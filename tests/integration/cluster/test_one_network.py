"""One network over two routers (in one process, real sockets, one broker): any router serves with any miner.

* A k=3 task on a router with no miners of its own runs on the other router's three miners, relayed, verified.
* Miners spread over both routers are one pool: each router sees every node once, and a task on either may use
  nodes of both.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from hivemesh.config import SessionDefaults

from ...conftest import API_KEY, Network, until

MODEL = "instant-echo"
H = {"authorization": f"Bearer {API_KEY}"}


def _start(a: Network, b: Network, db: Path, redis_url: str) -> None:
    url = f"sqlite+aiosqlite:///{db}"
    defaults = SessionDefaults(redundancy=3, quorum=2, mode="exact")
    for net in (a, b):
        net.start_router(database_url=url, ledger_url=url, cluster_url=redis_url, defaults=defaults)


def _ask(net: Network) -> dict[str, object]:
    r = httpx.post(
        f"{net.url}/v1/chat/completions",
        headers=H,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()["hivemesh"]
    return out


def test_a_router_without_miners_serves_verified_through_another(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str
) -> None:
    a, b = two
    _start(a, b, tmp_path / "shared.db", redis_url)
    nodes = {b.add_miner(name).identity.address for name in "xyz"}
    until(lambda: set(a.service.hub.remote) == nodes, timeout=10.0)
    assert not a.service.hub.links
    for _ in range(3):
        out = _ask(a)
        assert out["verdict"] == "verified" and set(out["miners"]) == nodes  # type: ignore[arg-type]
    # every reservation made through the relay was given back on both sides
    until(lambda: all(ln.inflight == 0 for ln in b.service.hub.links.values()), timeout=10.0)
    until(lambda: all(ln.inflight == 0 for ln in a.service.hub.remote.values()), timeout=10.0)


def test_miners_spread_over_routers_are_one_pool(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str
) -> None:
    a, b = two
    _start(a, b, tmp_path / "shared.db", redis_url)
    on_a = {a.add_miner("p").identity.address}
    on_b = {b.add_miner(name).identity.address for name in "qr"}
    until(lambda: set(a.service.hub.remote) == on_b and set(b.service.hub.remote) == on_a, timeout=10.0)
    for net in (a, b):
        out = _ask(net)
        assert out["verdict"] == "verified" and set(out["miners"]) == on_a | on_b  # type: ignore[arg-type]
