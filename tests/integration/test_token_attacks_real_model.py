"""Token-level verification against real-model attackers: SmolLM2 miners in-process, token mode, v=1.

Two attackers from ``bench.attackers``: one that swaps a content token of its honest answer for the model's best
other word there (a one-token fact swap; the claimed token ids are exactly the cheated text's), and one that runs
a perturbed copy of the model under the advertised name. Neither ever gets a wrong answer served as verified, and
both are struck for "fraud". Four honest miners give room for the first verifier, two escalation verifiers and
the regenerating miner. Tasks are short (24 tokens); each test stops as soon as the attacker has been caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.attackers import AttackEngine, build

from hivemesh.config import SessionDefaults
from hivemesh.engines.llamacpp import LlamaCppEngine

from ..conftest import Network

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
TOKEN = SessionDefaults(redundancy=1, quorum=1, mode="token", verifiers=1)
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What do bees make?",
    "Describe the sea in one sentence.",
    "Name a planet in our solar system.",
    "What is the opposite of cold?",
]
MAX_TASKS = 25  # the attacker is drawn as generator about 1 in 5 times: (4/5)^25 < 0.4 % to never be drawn


@pytest.fixture
def net(network: Network) -> Iterator[Network]:
    """A fresh network per attacker, so it starts with the same standing as the honest miners."""
    network.start_router(defaults=TOKEN)
    for i in range(4):
        network.add_miner(f"honest-{i}", engine_obj=LlamaCppEngine(n_threads=1))
    yield network


def fraud_strikes(network: Network, node: str) -> int:
    async def read() -> int:
        from sqlalchemy import update

        from hivemesh.store import schema as s

        store = network.service.store  # a write through the same FIFO writer: every earlier write is done
        await store.write(update(s.leases).where(s.leases.c.name == "-").values(holder="-"))
        rows = await store.node_events(kind="fraud", limit=1000)
        return sum(1 for r in rows if r["node"] == node)

    return network.lt.run(read())


def honest_accepts(network: Network, prompt: str, text: str) -> bool:
    """Whether an honest engine (not the one that verified it) accepts ``text`` as its own greedy answer, within
    the tolerance: a claim may differ from the honest greedy text only at near ties (bounded by the cap and the
    allowance), e.g. a first token within half a logit of the honest pick."""
    from hivemesh.core.verdict import Claim, Tolerance, judge
    from hivemesh.engines.base import GenerationRequest, VerifyRequest
    from hivemesh.protocol.wire import ChatMessage, Evidence, SamplingParams

    engine = network.agents["honest-0"].engine
    params = SamplingParams(temperature=0.0, seed=1, max_tokens=24)
    req = GenerationRequest(
        model=MODEL, kind="chat", params=params, messages=(ChatMessage(role="user", content=prompt),)
    )

    async def run() -> bool:
        llm = engine._llm
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        finish = "length" if len(ids) >= params.max_tokens else "stop"
        tokens = tuple(ids if finish == "length" else [*ids, llm.token_eos()])
        c = await engine.verify(VerifyRequest(req, tokens, text, finish))  # type: ignore[arg-type]
        ev = Evidence(
            task_id="t",
            node="0x0",
            picks=c.picks,
            margins=c.margins,
            ranks=c.ranks,
            logprobs=c.logprobs,
            text_ok=c.text_ok,
            prompt_tokens=c.prompt_tokens,
            context_length=c.context_length,
            problem=c.problem,
            elapsed_ms=0,
        )
        return judge(Claim(tokens, finish, params.max_tokens), ev, Tolerance()).accepted  # type: ignore[arg-type]

    return network.lt.run(run())


def attack(network: Network, name: str, engine: AttackEngine, *, every_claim_cheats: bool = False) -> None:
    """Ask until the attacker cheated and was struck; every verified answer it served must be the honest one."""
    agent = network.add_miner(name, engine_obj=engine)
    node = agent.identity.address
    client = network.client()
    served_by_attacker: list[tuple[str, str]] = []
    try:
        for i in range(MAX_TASKS):
            prompt = PROMPTS[i % len(PROMPTS)]
            r = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                seed=1,
                max_tokens=24,
            )
            hm: dict[str, Any] = r.model_extra["hivemesh"]
            if hm["verdict"] == "verified" and hm["answered_by"] == node:
                served_by_attacker.append((prompt, r.choices[0].message.content or ""))
            cheats = engine.claims if every_claim_cheats else engine.cheats
            if cheats and fraud_strikes(network, node):
                break
        assert cheats >= 1, f"{name} never cheated as generator in {MAX_TASKS} tasks"
        assert fraud_strikes(network, node) >= 1
        for (
            prompt,
            text,
        ) in served_by_attacker:  # a verified answer of the attacker passes an independent check
            assert honest_accepts(network, prompt, text), (prompt, text)
    finally:
        network.kill_miner(name)


def test_one_token_fact_swap_is_never_verified_and_is_struck(net: Network) -> None:
    engine = build("swap", threads=1)
    attack(net, "swap", engine)
    assert engine.claims >= 1


def test_perturbed_model_under_the_same_name_is_never_verified_and_is_struck(
    net: Network, tmp_path: Path
) -> None:
    engine = build("other_model", threads=1, cache_dir=tmp_path / "perturbed")
    # an honest engine on other weights: every answer it claims is another model's
    attack(net, "perturbed", engine, every_claim_cheats=True)
