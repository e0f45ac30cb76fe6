"""Token-level verification end to end: a real router, real miner agents on 127.0.0.1, the official SDK.

The miners run the deterministic instant engine (it generates and verifies like a real engine, with its own token
ids), some of them wrapped to cheat the way an attacker would: change one token, stop early, or lie as a verifier.
The real model's attacks are in ``test_token_attacks_real_model.py`` and ``bench/verification.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hivemesh.config import SessionDefaults
from hivemesh.engines.base import Event, Finished, GenerationRequest, Piece, TokenChecks, VerifyRequest
from hivemesh.engines.instant import EOS, WORDS, InstantEngine
from hivemesh.protocol.wire import ModelCard
from tests.conftest import API_KEY, Network

TOKEN = SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1)
PROMPT = [{"role": "user", "content": "name ten words"}]


class Cheater(InstantEngine):
    """Generates the honest answer, then tampers with it: ``swap`` changes one token (a fact swap), ``truncate``
    stops early and claims the model stopped. Its verification stays honest."""

    def __init__(self, how: str) -> None:
        super().__init__(tokens=10)
        self.how = how

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        ids, prompt_tokens = self._answer(request)
        words = [t for t in ids if t != EOS]
        if self.how == "swap":
            words[3] = (words[3] + 1) % len(WORDS)
            ids = [*words, EOS] if ids[-1:] == [EOS] else words
        elif self.how == "truncate":
            words = words[:4]
            ids = [*words, EOS]
        yield Piece(" ".join(WORDS[t] for t in words))
        yield Finished(
            "stop" if ids[-1:] == [EOS] else "length",
            _usage(prompt_tokens, len(words)),
            tokens=tuple(ids),
        )


class LyingVerifier(InstantEngine):
    """Generates honestly but accuses every claim it checks of a wrong first token."""

    def __init__(self) -> None:
        super().__init__(tokens=10)

    async def verify(self, request: VerifyRequest) -> TokenChecks:
        honest = await super().verify(request)
        n = len(request.tokens)
        return TokenChecks(
            picks=((request.tokens[0] + 1) % EOS, *request.tokens[1:]),
            margins=(50.0, *([0.0] * (n - 1))),
            ranks=(7, *([1] * (n - 1))),
            logprobs=(-9.0, *([0.0] * (n - 1))),
            text_ok=honest.text_ok,
            prompt_tokens=honest.prompt_tokens,
            context_length=honest.context_length,
        )


def _usage(prompt_tokens: int, completion_tokens: int) -> Any:
    from hivemesh.protocol.wire import Usage

    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def honest_answer(seed: int) -> str:
    eng = InstantEngine(tokens=10)
    from hivemesh.protocol.wire import ChatMessage, SamplingParams

    req = GenerationRequest(
        model="instant-echo",
        kind="chat",
        params=SamplingParams(seed=seed, max_tokens=64, temperature=0.0),
        messages=tuple(ChatMessage(role="user", content=m["content"]) for m in PROMPT),  # type: ignore[arg-type]
    )
    ids, _ = eng._answer(req)
    return " ".join(WORDS[t] for t in ids if t != EOS)


def strikes(network: Network, kind: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        from sqlalchemy import update

        from hivemesh.store import schema as s

        store = network.service.store  # a write through the same FIFO writer: every earlier write is done
        await store.write(update(s.leases).where(s.leases.c.name == "-").values(holder="-"))
        rows = await store.node_events(kind=kind, limit=1000)
        out: dict[str, int] = {}
        for r in rows:
            out[r["node"]] = out.get(r["node"], 0) + 1
        return out

    return network.lt.run(read())


def ask(client: Any, seed: int) -> Any:
    return client.chat.completions.create(
        model="instant-echo", messages=PROMPT, temperature=0, seed=seed, max_tokens=64
    )


def test_honest_answer_is_verified_by_a_different_miner(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    for name in ("a", "b", "c"):
        network.add_miner(name, engine_obj=InstantEngine(tokens=10))
    client = network.client()
    for seed in range(5):
        r = ask(client, seed)  # the last one asks with seed 4
        hm = r.model_extra["hivemesh"]
        assert r.choices[0].message.content == honest_answer(seed)
        assert hm["verdict"] == "verified" and hm["mode"] == "token"
        assert len(hm["verifiers"]) == 1 and hm["verifiers"][0] != hm["generator"]
        assert hm["evidence"]["checks"][0]["checked"] == 11  # 10 words and the end of generation
    task = httpx.get(
        f"{network.url}/api/v1/tasks/{hm['session_id']}/{hm['task_id']}",
        headers={"authorization": f"Bearer {API_KEY}"},
    ).json()
    roles = {a["node"]: a["role"] for a in task["miners"]}
    assert sorted(roles.values()) == ["generator", "verifier"]
    assert task["seed"] == 4  # the user's sampling seed ...
    assert int(task["shuffle_seed"]) == int(hm["shuffle_seed"])  # ... and the router's own seed for the draw


@pytest.mark.parametrize("how", ["swap", "truncate"])
def test_a_cheating_generator_never_gets_a_wrong_answer_verified_and_is_proven_a_fraud(
    network: Network, how: str
) -> None:
    network.start_router(defaults=TOKEN)
    cheater = network.add_miner("cheater", engine_obj=Cheater(how))
    for name in ("a", "b", "c"):
        network.add_miner(name, engine_obj=InstantEngine(tokens=10))
    client = network.client()
    frauds = 0
    for seed in range(40):
        r = ask(client, seed)
        hm = r.model_extra["hivemesh"]
        assert r.choices[0].message.content == honest_answer(seed), hm
        assert hm["verdict"] == "verified"
        assert hm["generator"] != cheater.identity.address
        if hm["fraud_proofs"]:
            proof = hm["fraud_proofs"][0]
            assert proof["generator"] == cheater.identity.address
            assert proof["reason"] == "token_mismatch"  # truncation: EOS where the model goes on
            frauds += 1
        if frauds >= 2:
            break
    assert frauds >= 1
    assert strikes(network, "fraud").keys() == {cheater.identity.address}


def test_a_false_accusation_strikes_nobody_and_the_honest_answer_is_still_served(network: Network) -> None:
    """Rechecks that accept do not prove the accuser lied (sybil rechecks would say the same of an honest accuser):
    nobody is struck, the accuser is barred from the task, another generator answers, and it is verified."""
    network.start_router(defaults=TOKEN)
    liar = network.add_miner("liar", engine_obj=LyingVerifier())
    for name in ("a", "b", "c"):
        network.add_miner(name, engine_obj=InstantEngine(tokens=10))
    client = network.client()
    disputed = None
    for seed in range(40):
        r = ask(client, seed)
        hm = r.model_extra["hivemesh"]
        assert hm["verdict"] == "verified"
        assert r.choices[0].message.content == honest_answer(seed)
        assert liar.identity.address not in hm["verifiers"]
        task = httpx.get(
            f"{network.url}/api/v1/tasks/{hm['session_id']}/{hm['task_id']}",
            headers={"authorization": f"Bearer {API_KEY}"},
        ).json()
        notes = [h for h in task["history"] if h.get("phase") == "unconfirmed_accusation"]
        if notes:
            disputed = task
            assert notes[0]["accusers"] == [liar.identity.address]
            assert hm["generator"] != notes[0]["node"]  # regenerated by another miner
            break
    assert disputed is not None, "the liar never verified a task"
    for kind in ("false_accusation", "fraud", "dissent"):
        assert not strikes(network, kind)  # a word against a word punishes nobody


def test_alone_a_generator_gets_an_unverified_answer(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    network.add_miner("a", engine_obj=InstantEngine(tokens=10))
    r = ask(network.client(), 1)
    assert r.model_extra["hivemesh"]["verdict"] == "unverified"


def test_streaming_ends_with_the_verdict_and_the_verifier(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    for name in ("a", "b"):
        network.add_miner(name, engine_obj=InstantEngine(tokens=10))
    chunks = list(
        network.client().chat.completions.create(
            model="instant-echo",
            messages=PROMPT,
            temperature=0,
            seed=3,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == honest_answer(3)
    last = chunks[-1].model_extra["hivemesh"]
    assert last["verdict"] == "verified" and len(last["verifiers"]) == 1


def test_under_load_every_answer_still_gets_its_verifier(network: Network) -> None:
    """Two single-slot miners and a queue of tasks: a claim waiting for a check takes freed capacity before the
    scheduler can give it to a new generation, so no answer falls back to unverified."""
    from concurrent.futures import ThreadPoolExecutor

    network.start_router(defaults=TOKEN)
    for name in ("a", "b"):
        network.add_miner(name, engine_obj=InstantEngine(capacity=1, tokens=10, token_delay_s=0.005))
    client = network.client()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda seed: ask(client, seed), range(16)))
    verdicts = [r.model_extra["hivemesh"]["verdict"] for r in replies]
    assert verdicts == ["verified"] * 16
    assert [r.choices[0].message.content for r in replies] == [honest_answer(s) for s in range(16)]


def test_an_answer_cut_at_max_tokens_is_verified_and_nobody_is_struck(network: Network) -> None:
    network.start_router(defaults=TOKEN)
    for name in ("a", "b"):
        network.add_miner(name, engine_obj=InstantEngine(tokens=10))
    r = network.client().chat.completions.create(
        model="instant-echo", messages=PROMPT, temperature=0, seed=1, max_tokens=10
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    assert r.model_extra["hivemesh"]["verdict"] == "verified"
    assert not strikes(network, "fraud") and not strikes(network, "garbage")


class VerifyOnly(InstantEngine):
    """An honest miner that advertises no token generation: the router uses it only to verify."""

    def models(self) -> list[ModelCard]:
        return [c.model_copy(update={"tokens": False}) for c in super().models()]


def test_the_only_other_generator_regenerates_a_proven_fraud(network: Network) -> None:
    """Two generators (a cheater and one honest miner) and verifiers that cannot generate: after a fraud proof the
    honest miner, read second by the shuffle and maybe just a verifier of the same task, regenerates the answer."""
    network.start_router(defaults=TOKEN)
    cheater = network.add_miner("cheater", engine_obj=Cheater("swap"))
    network.add_miner("honest", engine_obj=InstantEngine(tokens=10))
    for name in ("v1", "v2"):
        network.add_miner(name, engine_obj=VerifyOnly(tokens=10))
    client = network.client()
    frauds = 0
    for seed in range(30):
        r = ask(client, seed)
        hm = r.model_extra["hivemesh"]
        assert r.choices[0].message.content == honest_answer(seed), hm
        assert hm["verdict"] == "verified"
        frauds += bool(hm["fraud_proofs"])
        if frauds >= 2:
            break
    assert frauds >= 1
    assert strikes(network, "fraud").keys() == {cheater.identity.address}
