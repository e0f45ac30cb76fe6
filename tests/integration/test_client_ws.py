"""The client WebSocket API (/api/v1/ws), driven with the ``websockets`` client as a user would.

One socket carries several tasks by the ids the client chose: tokens, phase events and the verdict for each; errors
in the OpenAI shape per task; authentication by header or first message; bounded messages and tasks in flight;
closing the socket cancels what is unfinished on every miner."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from hivemesh.config import SessionDefaults
from hivemesh.engines.instant import InstantEngine
from hivemesh.router.client_ws import MAX_INFLIGHT, MAX_MESSAGE
from tests.conftest import API_KEY, Network

TOKEN = SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1)
CHAT = {"model": "instant-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
DONE = ("result", "error")


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router(defaults=TOKEN)
    network.add_miner("a")
    network.add_miner("b")
    return network


def ws_url(net: Network) -> str:
    return net.url.replace("http://", "ws://") + "/api/v1/ws"


@contextlib.contextmanager
def open_ws(net: Network, *, header: bool = True) -> Iterator[ClientConnection]:
    headers = {"authorization": f"Bearer {API_KEY}"} if header else None
    with connect(ws_url(net), additional_headers=headers, open_timeout=10, max_size=2**23) as ws:
        if not header:
            ws.send(json.dumps({"type": "auth", "api_key": API_KEY}))
        ready = json.loads(ws.recv(timeout=10))
        assert ready["type"] == "ready"
        yield ws


def collect(ws: ClientConnection, ids: set[str | None]) -> dict[str | None, list[dict[str, Any]]]:
    """Every message per task id until each of ``ids`` has ended (a result or an error)."""
    got: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    open_ = set(ids)
    while open_:
        msg = json.loads(ws.recv(timeout=30))
        got[msg["id"]].append(msg)
        if msg["type"] in DONE:
            open_.discard(msg["id"])
    return got


def test_tasks_multiplexed_with_tokens_phases_and_verdicts(net: Network) -> None:
    with open_ws(net) as ws:
        ws.send(json.dumps({"type": "submit", "id": "chat-1", "body": CHAT}))
        ws.send(json.dumps({"type": "submit", "id": "chat-2", "body": {**CHAT, "seed": 7}}))
        prompt = {"model": "instant-echo", "prompt": "once", "max_tokens": 4}
        ws.send(json.dumps({"type": "submit", "id": "legacy", "body": prompt}))
        got = collect(ws, {"chat-1", "chat-2", "legacy"})
    for cid in ("chat-1", "chat-2", "legacy"):
        msgs = got[cid]
        kinds = [m["type"] for m in msgs]
        assert kinds[0] == "accepted" and kinds[-1] == "result" and kinds.count("result") == 1
        phases = [m["phase"] for m in msgs if m["type"] == "phase"]
        assert {"assigned", "committed", "verify_requested", "validated"} <= set(phases), phases
        result = msgs[-1]
        assert result["verdict"] == "verified"
        response = result["response"]
        assert response["hivemesh"]["verdict"] == "verified"
        assert response["object"] == ("text_completion" if cid == "legacy" else "chat.completion")
        choice = response["choices"][0]
        text = choice["text"] if cid == "legacy" else choice["message"]["content"]
        assert "".join(m["text"] for m in msgs if m["type"] == "token") == text
        assert all(m["task_id"] == msgs[0]["task_id"] for m in msgs if m["type"] == "phase")


def test_first_message_auth_and_bad_keys(net: Network) -> None:
    with open_ws(net, header=False) as ws:
        ws.send(json.dumps({"type": "submit", "id": "x", "body": CHAT}))
        assert collect(ws, {"x"})["x"][-1]["type"] == "result"
    with connect(ws_url(net), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "auth", "api_key": "hm-wrong"}))
        err = json.loads(ws.recv(timeout=10))
        assert err["type"] == "error" and err["status"] == 401
        assert err["error"]["type"] == "authentication_error"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_errors_per_task_in_the_openai_shape(net: Network) -> None:
    with open_ws(net) as ws:
        ws.send(json.dumps({"type": "submit", "id": "good", "body": CHAT}))
        ws.send(json.dumps({"type": "submit", "id": "nomodel", "body": {**CHAT, "model": "nope"}}))
        fn = {"name": "f", "parameters": {}}
        ws.send(json.dumps({"type": "submit", "id": "tools", "body": {**CHAT, "functions": [fn]}}))
        ws.send(json.dumps({"type": "submit", "id": "bad", "body": {**CHAT, "temperature": 9}}))
        ws.send(json.dumps({"type": "submit", "id": "nothing"}))  # no body: the message itself is invalid
        got = collect(ws, {"good", "nomodel", "tools", "bad", None})
    assert got["good"][-1]["type"] == "result"
    for cid, status, param in (
        ("nomodel", 404, "model"),
        ("tools", 400, "functions"),
        ("bad", 400, "temperature"),
    ):
        (err,) = got[cid]
        assert err["type"] == "error" and err["status"] == status
        assert set(err["error"]) == {"message", "type", "param", "code"}
        assert err["error"]["param"] == param
    (unnamed,) = got[None]  # an error about a message that names no task
    assert unnamed["type"] == "error" and unnamed["status"] == 400


def test_bounds_on_messages_and_tasks_in_flight(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    network.add_miner("a", engine_obj=InstantEngine(tokens=200, token_delay_s=0.05))
    network.add_miner("b", engine_obj=InstantEngine(tokens=200, token_delay_s=0.05))
    with open_ws(network) as ws:
        for i in range(MAX_INFLIGHT + 1):
            ws.send(json.dumps({"type": "submit", "id": f"t{i}", "body": {**CHAT, "max_tokens": 200}}))
        refused = None
        while refused is None:
            msg = json.loads(ws.recv(timeout=30))
            if msg["type"] == "error":
                refused = msg
        assert refused["id"] == f"t{MAX_INFLIGHT}" and refused["status"] == 429
        ws.send(json.dumps({"type": "cancel", "id": "t0"}))
        while not ((msg := json.loads(ws.recv(timeout=30)))["id"] == "t0" and msg["type"] in DONE):
            pass
        assert msg["type"] == "error" and msg["error"]["code"] == "cancelled"
    # closing the socket cancelled the other tasks on every miner
    wait_idle(network)
    with open_ws(network) as ws:
        ws.send("x" * (MAX_MESSAGE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def wait_idle(net: Network) -> None:
    async def idle() -> None:
        while any(agent.jobs for agent in net.agents.values()):  # noqa: ASYNC110 - no event for this
            await asyncio.sleep(0.01)

    net.lt.run(asyncio.wait_for(idle(), 5))
