"""The miner hub against hostile connections on a real router: frames that are not a Hello, huge ids, floods, and
nodes without stake asking for paid work. Each defence ends in a clean close with a close code and a bounded record,
never in a traceback, and an honest miner keeps being served."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from hivemesh.config import COR, SessionDefaults
from hivemesh.identity import Identity
from hivemesh.miner.agent import ws_url
from hivemesh.protocol import wire
from hivemesh.router.hub import FRAME_BURST, MAX_RECORDED, MAX_STRIKES

from ..conftest import API_KEY, Network

MODEL = "instant-echo"
ADMIN = {"authorization": f"Bearer {API_KEY}"}
HUGE = 3_900_000  # characters in a "task id" that fills most of a 4 MB frame
SMALL = 4 * MAX_RECORDED  # what any stored or logged field may take, with room for the context around it


# ---------------------------------------------------------------------- raw connections


async def _joined(url: str, identity: Identity) -> ClientConnection:
    """Dial the router, answer its Challenge with a signed Hello and wait for the Welcome."""
    ws = await connect(ws_url(url), max_size=wire.MAX_FRAME, open_timeout=10)
    challenge = wire.decode_to_miner(await ws.recv())
    assert isinstance(challenge, wire.Challenge)
    hello = wire.Hello(
        node=identity.address,
        nonce=challenge.nonce,
        models=(wire.ModelCard(id=MODEL, engine="instant", context_length=8192),),
        capacity=4,
    )
    sig = identity.sign(wire.signing_payload(hello, challenge.nonce))
    await ws.send(wire.encode(hello.model_copy(update={"sig": sig})))
    assert isinstance(wire.decode_to_miner(await ws.recv()), wire.Welcome)
    return ws


async def _send_until_closed(ws: ClientConnection, frames: list[str | bytes]) -> tuple[int | None, str]:
    """Send ``frames`` (stopping if the router hangs up), then wait for the router's close code and reason."""
    try:
        for frame in frames:
            await ws.send(frame)
        async with asyncio.timeout(20):
            async for _ in ws:  # a Ping or two may still arrive before the close
                pass
    except websockets.exceptions.ConnectionClosed:
        pass
    await ws.wait_closed()
    return ws.close_code, ws.close_reason or ""


async def _first_frame(url: str, frame: str | bytes) -> tuple[int | None, str]:
    """Answer the Challenge with ``frame``; the router's close code and reason."""
    async with connect(ws_url(url), open_timeout=10, max_size=wire.MAX_FRAME) as ws:
        await ws.recv()
        return await _send_until_closed(ws, [frame])


def _events(net: Network, node: str, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The node's events once at least ``n`` are stored (the store writes in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = net.lt.run(net.service.store.node_events(node=node, limit=10_000))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage()[:300] for r in bad]


def _bounded_log(caplog: pytest.LogCaptureFixture) -> None:
    longest = max((len(r.getMessage()) for r in caplog.records), default=0)
    assert longest < SMALL, longest


# ---------------------------------------------------------------------- 1. the first frame


FIRST_FRAMES: dict[str, Callable[[], str | bytes]] = {
    "binary": lambda: b"\x00\x01binary hello\xff",
    "binary_json": lambda: orjson.dumps({"type": "hello"}),
    "not_json": lambda: "hello, router",
    "not_a_hello": lambda: wire.encode(wire.Pong(nonce="n")),
    "huge_node": lambda: orjson.dumps(
        {"type": "hello", "node": "0x" + "a" * HUGE, "nonce": "n", "models": [], "capacity": 1}
    ).decode(),
}


@pytest.mark.parametrize("kind", sorted(FIRST_FRAMES))
def test_a_first_frame_that_is_not_a_hello_is_a_clean_close(
    network: Network, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    network.start_router()
    caplog.set_level(logging.INFO)
    code, reason = network.lt.run(_first_frame(network.url, FIRST_FRAMES[kind]()))
    assert code == 4401, (code, reason)
    assert reason.startswith("hello rejected") and len(reason) <= 123
    assert any("miner rejected at hello" in r.getMessage() for r in caplog.records)
    assert not network.service.hub.links
    _no_traceback(caplog)
    _bounded_log(caplog)


def test_an_oversized_first_frame_is_closed_by_the_server_without_a_traceback(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    network.start_router()
    caplog.set_level(logging.INFO)
    code, _ = network.lt.run(_first_frame(network.url, "x" * (wire.MAX_FRAME + 1024)))
    assert code == 1009  # message too big
    assert not network.service.hub.links
    _no_traceback(caplog)


def test_a_binary_frame_after_hello_is_a_garbage_strike(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    network.start_router()
    node = Identity.generate()

    async def go() -> int:
        ws = await _joined(network.url, node)
        await ws.send(b"\x00binary")
        await ws.send(wire.encode(wire.Pong(nonce="still here")))
        n = len(network.service.hub.links)
        await ws.close()
        return n

    assert network.lt.run(go()) == 1  # still connected after one binary frame
    (row,) = _events(network, node.address, 1)
    assert row["kind"] == "garbage" and "binary" in row["detail"]
    _no_traceback(caplog)


# ---------------------------------------------------------------------- 2. bounded records


def test_huge_ids_are_struck_and_stored_small(network: Network, caplog: pytest.LogCaptureFixture) -> None:
    network.start_router()
    caplog.set_level(logging.INFO)
    node = Identity.generate()
    huge = "t" * HUGE

    def j(obj: object) -> str:
        return orjson.dumps(obj).decode()

    frames: list[str | bytes] = [
        j({"type": "ack", "task_id": huge, "node": node.address, "sig": ""}),
        j({"type": "delta", "task_id": huge, "index": 0, "text": "x"}),
        j({"type": "ack", "task_id": "t1", "node": "0x" + "b" * HUGE, "sig": ""}),
        j({"type": "task_failed", "task_id": "t" * 128, "message": "m"}),  # the longest id the wire allows
        "g" * HUGE,  # not JSON at all
    ]
    frames += ["garbage"] * (MAX_STRIKES - len(frames))
    code, reason = network.lt.run(_send_until_closed(network.lt.run(_joined(network.url, node)), frames))
    assert (code, reason) == (4400, "too many protocol violations")
    rows = _events(network, node.address, MAX_STRIKES)
    assert len(rows) == MAX_STRIKES
    assert {r["kind"] for r in rows} == {"garbage", "unsolicited"}
    for r in rows:
        assert len(r["detail"]) < SMALL and len(r["task_id"] or "") < SMALL, r
    _no_traceback(caplog)
    _bounded_log(caplog)


# ---------------------------------------------------------------------- 4. floods


def test_thousands_of_garbage_frames_cost_twenty_strikes_and_the_connection(network: Network) -> None:
    network.start_router()
    node = Identity.generate()
    ws = network.lt.run(_joined(network.url, node))
    code, _ = network.lt.run(_send_until_closed(ws, ["not json"] * 5_000))
    assert code == 4400
    assert len(_events(network, node.address, MAX_STRIKES)) == MAX_STRIKES  # bounded, however much it sent


def test_a_flood_of_well_formed_frames_is_struck_once_and_cut_off(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    honest = network.add_miner("honest").identity.address
    node = Identity.generate()
    ws = network.lt.run(_joined(network.url, node))
    pongs: list[str | bytes] = [wire.encode(wire.Pong(nonce=f"p{i}")) for i in range(int(FRAME_BURST) * 3)]
    code, reason = network.lt.run(_send_until_closed(ws, pongs))
    assert (code, reason) == (4429, "flooding")
    rows = _events(network, node.address, 1)
    assert [r["kind"] for r in rows] == ["flood"]
    network.wait_miners(1)
    r = network.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert r.model_extra["hivemesh"]["miners"] == [honest]


def test_an_honest_miner_streaming_fast_is_not_a_flood(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    network.add_miner("fast", engine_obj=_fast_engine(400))
    node = network.agents["fast"].identity.address
    client = network.client()
    for _ in range(3):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "long"}], stream=True, max_tokens=400
        )
        assert sum(1 for _ in stream) > 1
    assert node in network.service.hub.links
    assert not [r for r in _events(network, node, 0, timeout=0) if r["kind"] == "flood"]


def _fast_engine(tokens: int) -> Any:
    from hivemesh.engines.instant import InstantEngine

    return InstantEngine(MODEL, tokens=tokens)


# ---------------------------------------------------------------------- 3. pool 0 and paid work


def _new_user(net: Network, funds: int) -> str:
    """A funded account's API key (billed), made through the admin endpoints."""
    address = Identity.generate().address
    with httpx.Client(base_url=net.url + "/api/v1", headers=ADMIN) as c:
        assert c.post("/admin/deposits", json={"account": address, "amount": funds}).status_code == 200
        r = c.post("/admin/keys", json={"account": address})
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])


def _staked_miner(net: Network, name: str, pool: int) -> str:
    """A miner whose node is staked for ``pool`` (its minimum) before it dials in."""
    return str(net.add_staked_miner(name, pool).identity.address)


def test_pool_zero_nodes_are_not_eligible_for_billed_work(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    free = _staked_miner(network, "free", 0)
    staked = _staked_miner(network, "staked", 1)
    hub = network.service.hub
    nodes: Callable[..., set[str]] = lambda **kw: {ln.node for ln in hub.serving(MODEL, "low", **kw)}  # noqa: E731
    assert nodes() == {free, staked}  # today's default: unbilled work may use both
    assert nodes(billed=True) == {staked}
    assert nodes(billed=True, network=True) == {free, staked}  # a validator's checks reach every node


def test_a_slashed_node_is_demoted_to_pool_zero(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"))
    staked = _staked_miner(network, "staked", 1)
    hub = network.service.hub
    assert not network.lt.run(hub.recheck_stake(staked))  # enough stake: nothing changes
    network.lt.run(network.service.ledger.slash(staked, 0.1, "test"))
    assert network.lt.run(hub.recheck_stake(staked))
    assert hub.links[staked].pool == 0
    assert not hub.serving(MODEL, "low", billed=True)
    assert [r["kind"] for r in _events(network, staked, 1)] == ["demoted"]


def test_a_billed_key_is_never_served_by_a_pool_zero_node(network: Network) -> None:
    network.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"), queue_timeout_s=2.0)
    _staked_miner(network, "free", 0)
    msgs: Any = [{"role": "user", "content": "pay me"}]
    # unbilled work (the router's static key) may use the unstaked node
    assert network.client().chat.completions.create(model=MODEL, messages=msgs).choices
    key = _new_user(network, 10 * COR)
    client = openai.OpenAI(base_url=network.base_url, api_key=key, max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, messages=msgs)
    assert err.value.status_code == 503
    staked = _staked_miner(network, "staked", 1)
    extra: Any = client.chat.completions.create(model=MODEL, messages=msgs).model_extra
    assert extra["hivemesh"]["miners"] == [staked]
