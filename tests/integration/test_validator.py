"""The cognitive module end to end: validators (in-process, on the network's loop) against a real router and real
instant miners. Leadership by lease and failover, L1 liveness, L2 verdicts moving levels, quarantine from user
sessions and recovery through network tasks, re-validation of nodes that rejoin, and the network API's signatures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import text
from websockets.asyncio.client import connect

from hivemesh.config import SessionDefaults
from hivemesh.engines.base import Finished
from hivemesh.engines.instant import WORDS
from hivemesh.errors import Conflict
from hivemesh.identity import Identity
from hivemesh.miner.agent import ws_url
from hivemesh.protocol import wire
from hivemesh.protocol.network import LEADER_LEASE, PREFIX, NodeInfo, request_payload
from hivemesh.router.leases import Leases
from hivemesh.validator.agent import ValidatorAgent
from hivemesh.validator.checks import CheckSet
from hivemesh.validator.client import signed_headers
from hivemesh.validator.config import ValidatorConfig

from ..conftest import API_KEY, Network
from .rogue import Rogue, honest_output

MODEL = "instant-echo"


@dataclass(frozen=True, slots=True)
class InstantWords:
    """What an honest instant miner says: words of its fixed vocabulary. A miner that lies or stays silent fails."""

    name: str = "instant words"
    prompt: str = "Say a few words."
    max_tokens: int = 8

    def check(self, output: str) -> bool:
        words = output.split()
        return bool(words) and all(w in WORDS for w in words)


INSTANT = CheckSet(l2=(InstantWords(),), canaries=(InstantWords("canary", "Tell me something."),))
HOUR = 3600.0
EXACT = SessionDefaults(
    redundancy=1, quorum=1, mode="exact"
)  # users' tasks precommit too (the rogues need it)
# a validator that only does what a test tells it (its duties run once on taking the lead, then wait an hour)
QUIET = ValidatorConfig(
    lease_ttl_s=30.0,
    renew_every_s=HOUR,
    ping_every_s=HOUR,
    ping_timeout_s=0.5,
    l2_every_s=HOUR,
    canary_every_s=HOUR,
    pending_every_s=HOUR,
    task_timeout_s=0.5,
    checks=INSTANT,
    l2_checks_per_round=1,
)


# ---------------------------------------------------------------------------------------------- helpers


def wait_until(net: Network, cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``cond()`` held (checked on the network's loop); fails after ``timeout``."""

    async def poll() -> float:
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.02)
        return time.monotonic() - t0

    return net.lt.run(poll(), timeout=timeout + 5)


def start(net: Network, agent: ValidatorAgent) -> asyncio.Task[None]:
    async def go() -> asyncio.Task[None]:
        return asyncio.ensure_future(agent.run())

    return net.lt.run(go())


def stop(net: Network, task: asyncio.Task[None]) -> None:
    async def halt() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    net.lt.run(halt())


def info(net: Network, node: str) -> NodeInfo:
    ln = net.service.hub.links[node]
    return NodeInfo(
        node=node,
        models=tuple(ln.models),
        validated=ln.validated,
        level=0,
        quarantined=False,
        connected_at=0.0,
    )


def ask(net: Network, model: str = MODEL, seed: int = 1) -> httpx.Response:
    return httpx.post(
        f"{net.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "seed": seed},
        timeout=30,
    )


def events(net: Network, node: str, kind: str) -> int:
    """How many ``kind`` events the node's record holds (once every event submitted so far is written)."""

    async def count() -> int:
        store = net.service.store
        await store.write(text("SELECT 1"))  # the writer keeps order: what was submitted before is committed
        return len(await store.node_events(node=node, kind=kind, limit=1000))

    return net.lt.run(count())


class Freezable:
    """A miner that serves like an honest instant miner until ``frozen``: from then on it acks what it is given and
    says nothing more, pongs included (a hung process whose socket stays open)."""

    def __init__(self, router_url: str) -> None:
        self.url = ws_url(router_url)
        self.identity = Identity.generate()
        self.frozen = False
        self.joined = asyncio.Event()
        self.stuck = asyncio.Event()  # it acked a task while frozen
        self._kept: dict[str, tuple[bytes, str, Finished]] = {}

    @property
    def address(self) -> str:
        return self.identity.address

    def _signed(self, msg: Any, nonce: str) -> str:
        return wire.encode(
            msg.model_copy(update={"sig": self.identity.sign(wire.signing_payload(msg, nonce))})
        )

    async def run(self) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            async with connect(self.url, open_timeout=10) as ws:
                challenge = wire.decode_to_miner(await ws.recv())
                assert isinstance(challenge, wire.Challenge)
                nonce, me = challenge.nonce, self.address
                card = wire.ModelCard(id=MODEL, engine="instant", context_length=8192)
                await ws.send(
                    self._signed(wire.Hello(node=me, nonce=nonce, models=(card,), capacity=4), nonce)
                )
                assert isinstance(wire.decode_to_miner(await ws.recv()), wire.Welcome)
                self.joined.set()
                async for raw in ws:
                    msg = wire.decode_to_miner(raw)
                    if isinstance(msg, wire.Ping) and not self.frozen:
                        await ws.send(wire.encode(wire.Pong(nonce=msg.nonce)))
                    elif isinstance(msg, wire.Assign):
                        await ws.send(self._signed(wire.Ack(task_id=msg.task_id, node=me), nonce))
                        if self.frozen:
                            self.stuck.set()
                            continue
                        honest = await honest_output(msg)
                        output, fin = honest.text, honest.finished
                        salt = secrets.token_bytes(16)
                        self._kept[msg.task_id] = (salt, output, fin)
                        if msg.reveal == "immediate":
                            await ws.send(self._commit(msg.task_id, nonce))
                            continue
                        pre = wire.Precommit(
                            task_id=msg.task_id,
                            node=me,
                            digest=hashlib.sha256(salt + output.encode()).hexdigest(),
                            usage=fin.usage,
                            finish_reason=fin.finish_reason,
                            elapsed_ms=1,
                        )
                        await ws.send(self._signed(pre, nonce))
                    elif isinstance(msg, wire.RevealRequest) and not self.frozen:
                        await ws.send(self._commit(msg.task_id, nonce))

    def _commit(self, task_id: str, nonce: str) -> str:
        salt, output, fin = self._kept.pop(task_id)
        commit = wire.Commit(
            task_id=task_id,
            node=self.address,
            output=output,
            salt=salt.hex(),
            usage=fin.usage,
            finish_reason=fin.finish_reason,
            elapsed_ms=1,
        )
        return self._signed(commit, nonce)


Make = Callable[..., ValidatorAgent]


@pytest.fixture
def net(network: Network) -> Network:
    return network


@pytest.fixture
def validator(network: Network) -> Iterator[Make]:
    """Makes validators for the network's router (on its loop); their HTTP clients are closed at the end."""
    made: list[ValidatorAgent] = []

    def make(identity: Identity, config: ValidatorConfig = QUIET) -> ValidatorAgent:
        async def build() -> ValidatorAgent:
            return ValidatorAgent(network.url, identity, config)

        agent = network.lt.run(build())
        made.append(agent)
        return agent

    yield make
    for agent in made:
        network.lt.run(agent.client.aclose())


# ---------------------------------------------------------------------------------------------- leadership


def test_one_validator_leads_at_a_time_and_another_takes_over(net: Network, validator: Make) -> None:
    ids = [Identity.generate() for _ in range(2)]
    net.start_router(validators=tuple(i.address for i in ids))
    node = net.add_miner("a").identity.address
    # the lease itself: granted to the first asker, refused to the second while it is live
    first, second = (validator(i, replace(QUIET, lease_ttl_s=1.0)) for i in ids)
    r1 = net.lt.run(first.client.lease(30))
    r2 = net.lt.run(second.client.lease(30))
    assert r1.granted and r1.holder == ids[0].address
    assert not r2.granted and r2.holder == ids[0].address and r2.expires_at == pytest.approx(r1.expires_at)
    # a follower may not act on nodes: nothing it does can be counted twice
    with pytest.raises(Conflict):
        net.lt.run(second.client.ping(node, 1.0))
    net.lt.run(first.client.lease(0))  # given up: the other may take it at once
    assert net.lt.run(second.client.lease(30)).granted
    net.lt.run(second.client.lease(0))
    for v in (first, second):
        net.lt.run(v.client.aclose())

    # two running validators: exactly one leads, the router agrees which
    fast = replace(QUIET, lease_ttl_s=1.0, renew_every_s=0.1)
    agents = [validator(i, fast) for i in ids]
    tasks = [start(net, a) for a in agents]
    wait_until(net, lambda: any(a.is_leader for a in agents))

    async def watch(seconds: float) -> set[int]:
        seen: set[int] = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            seen.add(sum(a.is_leader for a in agents))
            await asyncio.sleep(0.01)
        return seen

    assert net.lt.run(watch(1.0)) == {1}
    lead = next(i for i, a in enumerate(agents) if a.is_leader)
    other = agents[1 - lead]
    assert net.lt.run(Leases(net.service.store).get(LEADER_LEASE)).holder == agents[lead].address

    # the leader stops (gives its lease up): the other leads within a renewal period or two
    stop(net, tasks[lead])
    assert wait_until(net, lambda: other.is_leader, timeout=3) < 1.0

    # the new leader dies without a word: its lease runs out (1 s) and the first, back, takes over
    agents[lead] = validator(ids[lead], fast)
    tasks[lead] = start(net, agents[lead])

    async def mute() -> None:
        return None

    other._release = mute  # type: ignore[method-assign]  # a crash: no goodbye
    stop(net, tasks[1 - lead])
    took = wait_until(net, lambda: agents[lead].is_leader, timeout=5)
    assert 0.3 < took < 2.5
    assert net.lt.run(watch(0.3)) == {1}
    stop(net, tasks[lead])


# ---------------------------------------------------------------------------------------------- L1 liveness


def test_ping_a_healthy_node_and_a_hung_one_goes_offline_with_its_work_reassigned(
    net: Network, validator: Make
) -> None:
    v = Identity.generate()
    net.start_router(validators=(v.address,))
    healthy = net.add_miner("a").identity.address
    hung = Freezable(net.url)

    async def join() -> asyncio.Task[None]:
        task = asyncio.ensure_future(hung.run())
        await asyncio.wait_for(hung.joined.wait(), 10)
        return task

    net.lt.run(join())
    agent = validator(v)
    assert net.lt.run(agent.take_lead())
    # while a validator leads, users get only validated nodes: both pass their check now
    assert {n: [j.passed for j in js] for n, js in net.lt.run(agent.revalidate_pending()).items()} == {
        healthy: [True],
        hung.address: [True],
    }
    pongs = net.lt.run(agent.ping_round())
    assert all(p.ok and p.rtt_ms is not None and p.rtt_ms < 1000 for p in pongs.values()) and len(pongs) == 2

    # the node hangs holding a user's task (try seeds until the shuffle gives it one)
    hung.frozen = True
    with ThreadPoolExecutor(1) as pool:
        pending: Future[httpx.Response] | None = None
        for seed in range(40):
            pending = pool.submit(ask, net, MODEL, seed)
            while not (pending.done() or hung.stuck.is_set()):
                time.sleep(0.01)
            if hung.stuck.is_set():
                break
        assert pending is not None and hung.stuck.is_set()
        replies = [net.lt.run(agent.client.ping(hung.address, 0.2)) for _ in range(3)]
        assert [(r.ok, r.misses, r.offline) for r in replies] == [
            (False, 1, False),
            (False, 2, False),
            (False, 3, True),
        ]
        assert hung.address not in net.service.hub.links
        # its task went to the healthy node, well before the precommit deadline (120 s)
        r = pending.result(timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["hivemesh"]["answered_by"] == healthy
    assert events(net, hung.address, "ping_missed") == 3 and events(net, hung.address, "offline") == 1
    assert net.service.reputation.window(hung.address).timeouts >= 3
    assert net.lt.run(agent.client.ping(healthy, 1.0)).ok


# ---------------------------------------------------------------------------------------------- L2, levels, quarantine


def test_l2_verdicts_move_the_level_and_a_failing_node_is_kept_from_users_until_it_passes(
    net: Network, validator: Make
) -> None:
    v = Identity.generate()
    net.start_router(defaults=EXACT, validators=(v.address,))
    good = net.add_miner("a").identity.address
    liar = Rogue(net.url, "wrong", model="instant-liar")
    net.lt.spawn(liar.run())
    net.lt.run(liar.wait_connections(1))
    agent = validator(v)
    rep = net.service.reputation

    # before any validator leads, nobody is gated: the liar serves users
    assert ask(net, "instant-liar").status_code == 200
    assert net.lt.run(agent.take_lead())
    assert {n.node for n in net.lt.run(agent.client.pending()).data} == {good, liar.address}
    # ... and now it does not, until a validator has checked it
    r = ask(net, "instant-liar")
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_miner_available"

    # three passing capability tests take a new node from level 0 to 1 (the runner itself moved nothing)
    verdicts = net.lt.run(agent.validate(info(net, good), "l2", [InstantWords()] * 3))
    assert [j.passed for j in verdicts] == [True, True, True]
    assert rep.level(good) == 1 and events(net, good, "l2_pass") == 3 and events(net, good, "level_up") == 1
    c = rep.window(good)
    assert (c.assigned, c.precommitted_on_time, c.in_consensus, c.dissents) == (3, 3, 3, 0)
    assert ask(net).status_code == 200

    # the liar answers on time, but wrongly: failed, kept from users, the reason given
    (failed,) = net.lt.run(agent.validate(info(net, liar.address), "l2", [InstantWords()]))
    assert not failed.passed and "wrong answer" in failed.detail
    assert events(net, liar.address, "l2_fail") == 1 and rep.window(liar.address).dissents == 1
    assert liar.address in {n.node for n in net.lt.run(agent.client.pending()).data}
    r = ask(net, "instant-liar")
    assert r.status_code == 503
    assert "no miner can serve this session now" in r.json()["error"]["message"]
    # a canary it fails counts as well
    (canary,) = net.lt.run(agent.validate(info(net, liar.address), "canary", [INSTANT.canaries[0]]))
    assert not canary.passed and events(net, liar.address, "canary_fail") == 1

    # it mends its ways: one passing network task and it serves users again
    liar.behaviour = "honest"
    (passed,) = net.lt.run(agent.validate(info(net, liar.address), "l2", [InstantWords()]))
    assert passed.passed
    assert ask(net, "instant-liar").status_code == 200
    assert net.lt.run(agent.client.pending()).data == ()


def test_a_node_quarantined_by_its_scores_recovers_through_network_tasks(
    net: Network, validator: Make
) -> None:
    v = Identity.generate()
    net.start_router(defaults=EXACT, validators=(v.address,))
    mute = Rogue(net.url, "silent", model="instant-mute")  # acks, then never precommits
    net.lt.spawn(mute.run())
    net.lt.run(mute.wait_connections(1))
    node = mute.address
    agent = validator(v)
    rep = net.service.reputation
    assert net.lt.run(agent.take_lead())

    verdicts = net.lt.run(agent.validate(info(net, node), "l2", [InstantWords()] * 5))
    assert [j.passed for j in verdicts] == [False] * 5 and all("no answer" in j.detail for j in verdicts)
    assert rep.is_quarantined(node) and rep.scores(node).precommit < 0.6
    assert events(net, node, "quarantined") == 1
    # with no validator in charge any more, the scores alone keep it from users
    net.lt.run(agent.client.lease(0))
    r = ask(net, "instant-mute")
    assert r.status_code == 503 and "quarantined" in r.json()["error"]["message"]

    # network tasks still reach it; once it answers again, passing them earns its way back
    assert net.lt.run(agent.take_lead())
    mute.behaviour = "honest"
    passes = 0
    while rep.is_quarantined(node) and passes < 20:
        (j,) = net.lt.run(agent.validate(info(net, node), "l2", [InstantWords()]))
        assert j.passed
        passes += 1
    assert not rep.is_quarantined(node) and events(net, node, "released") == 1
    assert 5 <= passes <= 12
    assert ask(net, "instant-mute").status_code == 200


# ---------------------------------------------------------------------------------------------- re-validation


def test_a_node_that_rejoins_is_revalidated_before_it_serves_users(net: Network, validator: Make) -> None:
    v = Identity.generate()
    net.start_router(defaults=SessionDefaults(redundancy=1, quorum=1, mode="none"), validators=(v.address,))
    node = net.add_miner("a").identity.address
    cfg = replace(QUIET, lease_ttl_s=3.0, renew_every_s=0.3, pending_every_s=0.05)
    agent = validator(v, cfg)
    ready = asyncio.Event()

    async def run() -> asyncio.Task[None]:
        return asyncio.ensure_future(agent.run(ready.set))

    task = net.lt.run(run())
    net.lt.run(asyncio.wait_for(ready.wait(), 5))
    assert net.service.hub.links[node].validated and events(net, node, "l2_pass") == 1
    assert ask(net).status_code == 200

    net.kill_miner("a")
    net.add_miner("a")  # the same node, a new connection: not trusted until checked again
    wait_until(net, lambda: node in net.service.hub.links and net.service.hub.links[node].validated)
    assert events(net, node, "l2_pass") == 2
    assert ask(net).status_code == 200
    stop(net, task)
    # the validator gave its lease up on the way out: users are not gated any more
    assert net.service.hub.validation_until <= time.time()


# ---------------------------------------------------------------------------------------------- authentication


def test_unsigned_forged_stale_and_replayed_calls_are_refused(net: Network) -> None:
    v, stranger = Identity.generate(), Identity.generate()
    net.start_router(validators=(v.address,))
    url = net.url + PREFIX + "/lease"
    body = b'{"name": "oracle", "ttl_s": 5}'

    def post(headers: dict[str, str], content: bytes = body) -> httpx.Response:
        return httpx.post(url, content=content, headers={**headers, "content-type": "application/json"})

    def error(r: httpx.Response, status: int, code: str) -> None:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == code

    good = signed_headers(v, "POST", PREFIX + "/lease", body)
    error(post({}), 401, "unsigned")
    error(post(signed_headers(stranger, "POST", PREFIX + "/lease", body)), 403, "not_a_validator")
    claims = {**signed_headers(stranger, "POST", PREFIX + "/lease", body), "x-hivemesh-validator": v.address}
    error(post(claims), 401, "bad_signature")
    error(post(good, b'{"name": "oracle", "ttl_s": 60}'), 401, "bad_signature")  # body changed after signing
    old = f"{time.time() - 60:.3f}"
    stale = {
        "x-hivemesh-validator": v.address,
        "x-hivemesh-timestamp": old,
        "x-hivemesh-signature": v.sign(request_payload("POST", PREFIX + "/lease", old, body)),
    }
    error(post(stale), 401, "stale_timestamp")
    other_path = signed_headers(v, "POST", PREFIX + "/ping", body)
    error(post(other_path), 401, "bad_signature")  # signed for another endpoint

    assert post(good).status_code == 200 and post(good).status_code == 401  # the second is a replay
    assert httpx.get(net.url + PREFIX + "/nodes").status_code == 401
    ok = httpx.get(net.url + PREFIX + "/nodes", headers=signed_headers(v, "GET", PREFIX + "/nodes", b""))
    assert ok.status_code == 200 and ok.json() == {"data": []}


# ---------------------------------------------------------------------------------------------- rewards


def test_network_work_is_rewarded_once_per_epoch_from_the_reward_pool(net: Network, validator: Make) -> None:
    from hivemesh.ledger import REWARD_POOL

    v = Identity.generate()
    net.start_router(defaults=EXACT, validators=(v.address,))
    good = net.add_miner("a").identity.address
    lg = net.service.ledger
    billing = net.service.config.billing
    net.lt.run(lg.deposit(REWARD_POOL, 10 * billing.node_reward))
    agent = validator(v)
    assert net.lt.run(agent.take_lead())
    verdicts = net.lt.run(agent.validate(info(net, good), "l2", [InstantWords()] * 2))
    assert all(j.passed for j in verdicts)
    wait_until(net, lambda: not net.service.billing._tasks)  # rewards are paid in the background
    assert net.lt.run(lg.account(good)).earned == billing.node_reward  # two passes, one epoch: paid once
    assert net.lt.run(lg.account(v.address)).earned == billing.validator_reward
    assert (
        net.lt.run(lg.balance(REWARD_POOL))
        == 10 * billing.node_reward - billing.node_reward - billing.validator_reward
    )
    assert net.lt.run(lg.verify()).ok
