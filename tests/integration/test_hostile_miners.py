"""Hostile miners against a real router: two honest instant miners plus one scripted rogue (``rogue.py``), k=3,
m=2, exact validation. For every kind of misbehaviour the user still gets the honest, verified answer, the rogue
is recorded with the right reason, and the task ends with every miner accounted for.

With exactly three miners and k=3 every miner gets every task, so the rogue's participation does not depend on the
seeded shuffle (the swap test, with a fourth miner, looks for a seed that picks the rogue).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.identity import Identity
from hivemesh.protocol import wire
from hivemesh.router.hub import MAX_STRIKES

from ..conftest import API_KEY, Network
from .rogue import JUNK, Behaviour, Rogue, signed_hello, try_hello

MODEL = "instant-echo"
AUTH = {"authorization": f"Bearer {API_KEY}"}


T = TypeVar("T")


def session(**kw: Any) -> SessionDefaults:
    base: dict[str, Any] = {
        "redundancy": 3,
        "quorum": 2,
        "mode": "exact",
        "ack_timeout_s": 1.0,
        "precommit_timeout_s": 1.0,
        "commit_timeout_s": 1.0,
    }
    return SessionDefaults(**(base | kw))


# ---------------------------------------------------------------------- harness


def add_rogue(net: Network, behaviour: Behaviour, name: str = "rogue", **kw: Any) -> Rogue:
    async def start() -> tuple[Rogue, asyncio.Task[None]]:
        rogue = Rogue(net.url, behaviour, **kw)
        task = asyncio.ensure_future(rogue.run())
        await rogue.wait_connections(1)
        return rogue, task

    rogue, task = net.lt.run(start())
    net.miners[name] = task  # type: ignore[assignment]  # the fixture cancels it at teardown
    net.agents[name] = rogue
    return rogue


def hostile(
    net: Network, behaviour: Behaviour, *, honest: int = 2, defaults: SessionDefaults | None = None, **kw: Any
) -> tuple[Rogue, list[str]]:
    """A router, ``honest`` honest instant miners and one rogue; returns the rogue and the honest addresses."""
    net.start_router(defaults=defaults or session())
    good = [net.add_miner(f"h{i}").identity.address for i in range(honest)]
    if behaviour == "forger":
        kw.setdefault("victim", good[0])
    rogue = add_rogue(net, behaviour, **kw)
    net.wait_miners(honest + 1)
    return rogue, good


def ask(net: Network, seed: int = 7, content: str = "please verify me") -> Any:
    return net.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], seed=seed
    )


def settle(net: Network, block: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Wait until the task has ended (every slot classified), then read it through the Session API."""
    tid = block["task_id"]

    async def ended() -> None:
        async with asyncio.timeout(timeout):
            while True:
                row = await net.service.store.get_task(tid)
                if row is not None and row["phase"] in ("ended", "failed"):
                    return
                await asyncio.sleep(0.01)

    net.lt.run(ended())
    r = httpx.get(f"{net.url}/api/v1/tasks/{block['session_id']}/{tid}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


# what the hub and the runner record against a misbehaving node (node_events also holds reputation's level and
# quarantine changes, which are not strikes)
STRIKES = frozenset(
    {
        "garbage",
        "bad_signature",
        "unsolicited",
        "replay",
        "timeout",
        "bad_reveal",
        "stream_mismatch",
        "dissent",
    }
)


def wait_for(get: Callable[[], T | None], timeout: float = 10) -> T:
    """Poll until ``get()`` returns something (the rogue runs on the network's loop, a little behind)."""
    deadline = time.monotonic() + timeout
    while (value := get()) is None:
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
    return value


def events(net: Network, node: str) -> list[dict[str, Any]]:
    """The strikes recorded against ``node``, oldest first."""
    rows = net.lt.run(net.service.store.node_events(node=node, limit=1000))
    return [r for r in reversed(rows) if r["kind"] in STRIKES]


def kinds(net: Network, node: str) -> dict[str, int]:
    return dict(Counter(e["kind"] for e in events(net, node)))


def slot_of(view: dict[str, Any], node: str) -> dict[str, Any]:
    (m,) = [m for m in view["miners"] if m["node"] == node]
    return m


def assert_honest_answer(
    net: Network, resp: Any, view: dict[str, Any], rogue: str, honest: list[str]
) -> None:
    """(1) verified honest answer, (3) task ended with every miner accounted for, honest nodes untouched."""
    block = resp.model_extra["hivemesh"]
    answer = resp.choices[0].message.content
    assert block["verdict"] == "verified", block
    assert rogue not in block["consensus"]
    assert set(block["consensus"]) == set(honest)
    assert view["phase"] == "ended" and view["verdict"] == "verified"
    assert view["answer"] == answer
    assert {m["node"] for m in view["miners"]} == {*honest, rogue} and len(view["miners"]) == 3
    assert all(m["status"] in ("committed", "failed") for m in view["miners"]), view["miners"]
    for node in honest:
        m = slot_of(view, node)
        assert m["status"] == "committed" and m["in_consensus"] is True and m["output"] == answer
        assert events(net, node) == [], f"honest node {node} was struck"
    final = view["hivemesh"]
    assert set(final["consensus"]) == set(honest) and final["dissent"] == [rogue] and final["pending"] == []


# ---------------------------------------------------------------------- behaviours


def test_garbage_frames_are_struck_and_the_router_keeps_serving(network: Network) -> None:
    rogue, honest = hostile(network, "garbage")
    for n, seed in enumerate((1, 2), start=1):
        resp = ask(network, seed=seed)
        view = settle(network, resp.model_extra["hivemesh"])
        assert_honest_answer(network, resp, view, rogue.address, honest)
        assert slot_of(view, rogue.address)["status"] == "failed"
        assert slot_of(view, rogue.address)["reason"] == "garbage"  # the out-of-order delta ended its slot
        assert kinds(network, rogue.address) == {"garbage": 8 * n}  # every bad frame, nothing else
    # still connected, still counted: nothing it sent took down its connection handler or the router
    assert rogue.address in network.service.hub.links
    assert httpx.get(network.url + "/healthz").json()["status"] == "ok"


def test_garbage_flood_is_cut_off_and_the_router_keeps_serving(network: Network) -> None:
    network.start_router(defaults=session())
    honest = [network.add_miner(f"h{i}").identity.address for i in range(2)]
    rogue = add_rogue(network, "flood", reconnect=False)
    network.lt.run(rogue.wait_closes(1))
    network.wait_miners(2)
    assert _miners(network) == set(honest)
    resp = ask(network)  # k=3 shrinks to the two miners left, which still verify
    assert resp.model_extra["hivemesh"]["verdict"] == "verified"
    assert set(resp.model_extra["hivemesh"]["miners"]) == set(honest)
    assert kinds(network, rogue.address) == {"garbage": MAX_STRIKES}
    assert rogue.closes == [(4400, "too many protocol violations")]


def test_liar_reveal_not_matching_its_precommit_is_rejected(network: Network) -> None:
    rogue, honest = hostile(network, "liar")
    resp = ask(network)
    view = settle(network, resp.model_extra["hivemesh"])
    assert_honest_answer(network, resp, view, rogue.address, honest)
    tid = view["id"]
    m = slot_of(view, rogue.address)
    assert m["status"] == "failed" and m["reason"] == "bad_reveal"
    assert m["precommit"] == hashlib.sha256(rogue.jobs[tid].salt + JUNK.encode()).hexdigest()
    assert [(e["kind"], e["task_id"]) for e in events(network, rogue.address)] == [("bad_reveal", tid)]
    assert (tid, "commit") in rogue.sent  # it did reveal (the honest text), and was refused


def test_copycat_sees_no_output_and_its_late_copy_is_rejected(network: Network) -> None:
    rogue, honest = hostile(network, "copycat", defaults=session(commit_timeout_s=10.0))
    resp = ask(network)
    block = resp.model_extra["hivemesh"]
    tid, answer = block["task_id"], resp.choices[0].message.content
    # Everything it received before its precommit: the handshake and the assignment, no output of anyone's.
    before = wait_for(lambda: rogue.seen_before_precommit.get(tid))  # the honest pair may answer first
    assert [wire.decode_to_miner(f).type for f in before] == ["challenge", "welcome", "assign"]
    assert not any(answer in f for f in before)
    # Handed the honest answer after the fact, it reveals it with a fresh salt: the digest cannot match.
    network.lt.run(_hand(rogue, tid, answer))
    view = settle(network, block)
    assert_honest_answer(network, resp, view, rogue.address, honest)
    m = slot_of(view, rogue.address)
    assert m["status"] == "failed" and m["reason"] == "bad_reveal" and m["in_consensus"] is not True
    assert [(e["kind"], e["task_id"]) for e in events(network, rogue.address)] == [("bad_reveal", tid)]
    # and at no point did the router send it anyone's output: only what a miner needs, never a result
    assert {wire.decode_to_miner(f).type for f in rogue.frames} <= {
        "challenge",
        "welcome",
        "assign",
        "reveal",
    }
    assert not any(answer in f for f in rogue.frames)


async def _hand(rogue: Rogue, tid: str, text: str) -> None:
    rogue.hand(tid, text)


def test_replayed_commits_are_rejected_and_change_nothing(network: Network) -> None:
    rogue, honest = hostile(network, "replayer")
    everyone = {*honest, rogue.address}
    # task A on connection 1: the rogue serves honestly and keeps its signed Commit
    a = settle(network, ask(network, seed=1).model_extra["hivemesh"])
    network.lt.run(rogue.drop())  # connection 2: a new challenge nonce
    # task B: replays A's commit (signed over connection 1's nonce) and a duplicate ack
    b = settle(network, ask(network, seed=2).model_extra["hivemesh"])
    # task C: replays A's commit again, B's commit (same connection, task no longer in flight), a duplicate ack
    resp = ask(network, seed=3)
    c = settle(network, resp.model_extra["hivemesh"])
    assert len(rogue.captured) == 3
    got = sorted((e["kind"], e["task_id"]) for e in events(network, rogue.address))
    assert got == sorted(
        [
            ("bad_signature", a["id"]),  # from B: another connection's signature does not verify here
            ("bad_signature", a["id"]),  # from C
            ("unsolicited", b["id"]),  # from C: valid signature, but B is over
            ("replay", a["id"]),  # duplicate acks
            ("replay", b["id"]),
            ("replay", c["id"]),
        ]
    )
    # no effect: every task verified with all three miners, the rogue included (it did serve honestly)
    for view in (a, b, c):
        assert view["phase"] == "ended" and view["verdict"] == "verified"
        assert set(view["hivemesh"]["consensus"]) == everyone and view["hivemesh"]["dissent"] == []
        assert all(m["status"] == "committed" and m["in_consensus"] for m in view["miners"])
    assert resp.choices[0].message.content == c["answer"] == slot_of(c, honest[0])["output"]
    # and the tasks the replays named are unchanged
    assert settle(network, a["hivemesh"]) == a and settle(network, b["hivemesh"]) == b
    for node in honest:
        assert events(network, node) == []


def test_forged_messages_are_bad_signatures_and_do_not_touch_the_victim(network: Network) -> None:
    rogue, honest = hostile(network, "forger")
    victim = rogue.victim
    assert victim == honest[0]
    resp = ask(network)
    view = settle(network, resp.model_extra["hivemesh"])
    assert_honest_answer(network, resp, view, rogue.address, honest)
    tid = view["id"]
    assert sorted((e["kind"], e["task_id"]) for e in events(network, rogue.address)) == sorted(
        [("bad_signature", tid)] * 7 + [("timeout", tid)]
    )
    # its own forged ack did not count: the slot timed out waiting for a real one
    m = slot_of(view, rogue.address)
    assert m["status"] == "failed" and m["reason"] == "timeout_ack"
    # the victim's record is its own: its reveal matched its own precommit (the router checks the digest over
    # salt, output and token ids), not the forged junk
    v = slot_of(view, victim)
    assert v["status"] == "committed" and v["reason"] is None and v["in_consensus"]
    junk = hashlib.sha256(bytes.fromhex(_salt(network, tid, victim)) + b"junk").hexdigest()
    assert v["precommit"] != junk


def _salt(net: Network, tid: str, node: str) -> str:
    rows = net.lt.run(net.service.store.task_assignments(tid))
    (row,) = [r for r in rows if r["node"] == node]
    return row["salt"]


def test_silent_miner_times_out_and_the_task_still_ends(network: Network) -> None:
    rogue, honest = hostile(network, "silent")
    resp = ask(network)
    block = resp.model_extra["hivemesh"]
    assert rogue.address in block["pending"]  # answered at quorum, without waiting for it
    view = settle(network, block)
    assert_honest_answer(network, resp, view, rogue.address, honest)
    m = slot_of(view, rogue.address)
    assert m["status"] == "failed" and m["reason"] == "timeout_precommit" and m["acked_at"] is not None
    assert [(e["kind"], e["task_id"]) for e in events(network, rogue.address)] == [("timeout", view["id"])]


def test_silent_miner_is_swapped_for_the_next_node(network: Network) -> None:
    # m=3: the two honest miners picked with the rogue cannot verify alone, so the replacement is needed (with m=2
    # the answer goes out at quorum in milliseconds and the runner only swaps while the answer is open).
    rogue, honest = hostile(network, "silent", honest=3, defaults=session(quorum=3))
    for seed in range(1, 40):  # the seeded shuffle picks 3 of 4: find a seed that picks the rogue
        resp = ask(network, seed=seed)
        view = settle(network, resp.model_extra["hivemesh"])
        first = {m["node"] for m in view["miners"] if m["slot"] < 3}
        if rogue.address in first:
            break
        assert view["verdict"] == "verified" and len(view["miners"]) == 3
    else:
        pytest.fail("no seed picked the rogue")
    assert [h["phase"] for h in view["history"]].count("swapped") == 1
    (replacement,) = [m["node"] for m in view["miners"] if m["slot"] == 3]
    assert replacement in honest
    m = slot_of(view, rogue.address)
    assert m["status"] == "failed" and m["reason"] == "timeout_precommit"
    block = resp.model_extra["hivemesh"]
    picked = {m["node"] for m in view["miners"]} - {rogue.address}
    assert block["verdict"] == "verified" and replacement in block["consensus"]
    assert set(block["consensus"]) == picked and rogue.address not in block["consensus"]
    assert view["phase"] == "ended" and view["hivemesh"]["dissent"] == [rogue.address]
    assert all(slot_of(view, n)["in_consensus"] for n in picked)
    assert [e["kind"] for e in events(network, rogue.address)] == ["timeout"]


@pytest.mark.parametrize(
    "behaviour",
    [
        "dropout",  # hangs up while the others are still streaming
        "late_dropout",
    ],
)
def test_streaming_leader_drops_out_and_the_stream_still_completes(
    network: Network, behaviour: Behaviour
) -> None:
    rogue, honest = hostile(network, behaviour)
    led = False
    for attempt in range(1, 6):  # until the rogue won the race to lead the stream at least once
        chunks = list(
            network.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "stream it"}], seed=attempt, stream=True
            )
        )
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert chunks[-1].choices[0].finish_reason is not None  # OpenAI's loop never meets an empty choices
        block = chunks[-1].model_extra["hivemesh"]  # the verdict rides on the last chunk
        if rogue.address not in block["miners"]:  # it was between connections when the task was assigned
            network.wait_miners(3)
            continue
        tid = block["task_id"]
        job = wait_for(lambda tid=tid: rogue.jobs.get(tid))  # it may still be computing its answer
        assert "".join(pieces) == job.honest.text  # the full honest text, nothing lost or doubled
        assert block["verdict"] == "verified", block
        assert rogue.address not in block["consensus"] and set(block["consensus"]) == set(honest)
        view = settle(network, block)
        assert view["phase"] == "ended" and view["answer"] == job.honest.text
        assert {m["node"] for m in view["miners"]} == {*honest, rogue.address} and len(view["miners"]) == 3
        m = slot_of(view, rogue.address)
        assert m["status"] == "failed" and m["reason"] == "disconnected"
        assert all(slot_of(view, n)["in_consensus"] for n in honest)
        led = pieces[0] == job.honest.pieces[0] + job.honest.pieces[1]  # the rogue's distinctive first delta
        network.lt.run(rogue.wait_connections(attempt + 1))
        network.wait_miners(3)
        if led:
            break
    assert led, "the rogue never led the stream; the hand-off was not exercised"


def test_wrong_output_is_outvoted_and_recorded_as_dissent(network: Network) -> None:
    rogue, honest = hostile(network, "wrong")
    resp = ask(network)
    block = resp.model_extra["hivemesh"]
    assert rogue.address in block["dissent"] + block["pending"]
    view = settle(network, block)
    assert_honest_answer(network, resp, view, rogue.address, honest)
    m = slot_of(view, rogue.address)
    assert m["status"] == "committed" and m["in_consensus"] is False and m["output"] == JUNK
    assert [(e["kind"], e["task_id"]) for e in events(network, rogue.address)] == [("dissent", view["id"])]


# ---------------------------------------------------------------------- the handshake


def _miners(net: Network) -> set[str]:
    r = httpx.get(net.url + "/api/v1/miners", headers=AUTH)
    assert r.status_code == 200
    return {m["node"] for m in r.json()["data"]}


@pytest.mark.parametrize("how", ["forged_signer", "replayed_hello", "not_a_hello"])
def test_hello_that_does_not_prove_the_node_is_refused(network: Network, how: str) -> None:
    network.start_router(defaults=session())
    good = network.add_miner("h0").identity.address
    key_a, claimed_b = Identity.generate(), Identity.generate().address
    old = wire.Challenge(nonce="00" * 16, router="0x0")  # an earlier connection's challenge

    def make(ch: wire.Challenge) -> str:
        if how == "forged_signer":  # signed by key A, claims to be node B
            return signed_hello(ch, claims=claimed_b, signer=key_a)
        if how == "replayed_hello":  # a genuine hello of A's, made for another connection
            return signed_hello(old, claims=key_a.address, signer=key_a)
        return wire.encode(wire.Ack(task_id="t", node=key_a.address))

    code, reason = network.lt.run(try_hello(network.url, make))
    assert code == 4401, (code, reason)
    assert reason.startswith("hello rejected")
    assert _miners(network) == {good}
    assert set(network.service.hub.links) == {good}
