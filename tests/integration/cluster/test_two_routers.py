"""Two routers on one database (store and ledger in one SQLite file), with and without the cluster's broker.

* A session deactivated on one router is refused by the other within a second: announced on the broker (every
  router drops its cached copy at once), or, without a broker, read again when the cached copy is a second old.
* An API key's requests per minute hold across routers: an rpm=4 key gets 4 requests through two routers, not 8,
  with the same ``x-ratelimit-*`` headers as on one router.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from hivemesh.identity import Identity
from hivemesh.ledger.accounts import COR

from ...conftest import API_KEY, Network

MODEL = "instant-echo"
ADMIN = {"authorization": f"Bearer {API_KEY}"}


def chat(net: Network, key: str = API_KEY, session: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if session:
        headers["x-hivemesh-session"] = session
    return httpx.post(
        f"{net.url}/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )


def start_both(a: Network, b: Network, db: Path, broker: str | None) -> None:
    url = f"sqlite+aiosqlite:///{db}"
    for net in (a, b):
        net.start_router(database_url=url, ledger_url=url, cluster_url=broker)


@pytest.mark.parametrize("with_broker", [True, False], ids=["broker", "no-broker"])
def test_a_session_deactivated_on_one_router_is_refused_by_the_other_within_a_second(
    two: tuple[Network, Network], tmp_path: Path, with_broker: bool, request: pytest.FixtureRequest
) -> None:
    a, b = two
    broker = str(request.getfixturevalue("redis_url")) if with_broker else None
    start_both(a, b, tmp_path / "network.db", broker)
    b.add_miner("on-b")
    r = httpx.post(
        f"{a.url}/api/v1/sessions", headers=ADMIN, json={"redundancy": 1, "quorum": 1, "mode": "none"}
    )
    assert r.status_code in (200, 201), r.text
    sid = r.json()["id"]
    assert chat(b, session=sid).status_code == 200  # B has read the session and keeps it

    r = httpx.post(f"{a.url}/api/v1/sessions/{sid}/deactivate", headers=ADMIN)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    while (status := chat(b, session=sid).status_code) == 200 and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    seen_after = time.monotonic() - t0
    assert status == 400
    assert seen_after < (0.5 if with_broker else 1.2), seen_after


def test_a_keys_rpm_holds_across_routers(
    two: tuple[Network, Network], tmp_path: Path, redis_url: str
) -> None:
    a, b = two
    start_both(a, b, tmp_path / "network.db", redis_url)
    a.add_staked_miner("on-a")
    b.add_staked_miner("on-b")
    account = Identity.generate().address
    with httpx.Client(base_url=a.url + "/api/v1", headers=ADMIN) as c:
        assert c.post("/admin/deposits", json={"account": account, "amount": 10 * COR}).status_code == 200
        r = c.post("/admin/keys", json={"account": account, "rpm": 4})
        assert r.status_code == 201, r.text
        key = r.json()["secret"]

    replies = [chat(net, key) for net in (a, b, a, b, a, b, a, b)]
    assert [r.status_code for r in replies] == [200] * 4 + [429] * 4
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies[:4]] == ["3", "2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "4" for r in replies)
    assert all(int(r.headers["retry-after"]) >= 1 for r in replies[4:])
