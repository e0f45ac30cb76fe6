"""The one way a completion starts, whatever door it came in by (OpenAI API, Session API, client WebSocket):
session -> spec (model, unserved parameters, context fit, sampling) -> the key's limits -> reserve and submit.
Each door authenticates its own way and renders the outcome its own way; everything between is here, so
validation, errors and limits are the same on all of them.

Before any miner is involved a request is refused (400) when it sets an OpenAI parameter the network does not
serve, or when its prompt provably cannot fit: the router has no tokenizer, so it uses a lower bound on the
prompt's token count, ``utf8_bytes // MAX_TOKEN_BYTES``, sound as long as no token of the model's vocabulary spans
more than ``MAX_TOKEN_BYTES`` bytes of text (SmolLM2's longest token is 32 bytes; 128 leaves room for vocabularies
with long runs of whitespace or punctuation as single tokens), and refuses when that bound alone reaches the
largest context any connected miner advertises for the model (``max_tokens`` is not added: engines shorten the
answer to the room left, so only a prompt that leaves no room at all is certain to fail); and when the prompt
could not travel in one miner frame (``wire.MAX_FRAME``). Prompts between the bound and the real limit reach a
miner, whose own context error comes back as the same 400 (``context_length_exceeded``), not as a miner failure.

Tools and structured output (``router.structured``) become the task's output constraint and ``logprobs`` its
``params.logprobs``; both are refused (400 naming the parameter) unless every connected miner serving the model
advertises them (``ModelCard.structured`` / ``.logprobs``: a miner that cannot would answer unconstrained), and
logprobs also when ``max_tokens x (top_logprobs + 1)`` entries could not travel in one miner frame.

The ``hivemesh`` extension field sets the task's consensus (``with_consensus``): ``redundancy`` k is k generators
with a majority quorum (k // 2 + 1) in the voting modes, and one generator with k - 1 verifiers in token mode;
``disagreement_policy`` ``fail`` turns an answer that is not verified into a 409, ``return_all`` adds every miner's
answer to the verification block (``Started.answers``), ``best_effort`` (the default) returns the best answer
with its verdict, as without the field.

A caller that goes away (``until_gone`` resolves) cancels its task: ``RouterService.cancel`` stops the run, whose
miners are told to cancel, and nothing is billed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from hivemesh.errors import (
    Conflict,
    ContextTooLong,
    HivemeshError,
    InvalidRequest,
    ModelNotFound,
    NoMinerAvailable,
)
from hivemesh.protocol.openai import ChatCompletionRequest, CompletionRequest, Consensus
from hivemesh.protocol.wire import MAX_FRAME, ChatMessage, Constraint, SamplingParams
from hivemesh.router.answers import answers_of, logprobs_of
from hivemesh.router.auth import Principal
from hivemesh.router.domain import Outcome, SessionSpec, TaskSpec
from hivemesh.router.service import RouterService, new_task_id
from hivemesh.router.sessions import MAX_VERIFIERS
from hivemesh.router.structured import shape
from hivemesh.router.token_run import Run

Kind = Literal["chat", "completion"]
Body = ChatCompletionRequest | CompletionRequest

PROMPT_FRAME_BUDGET = MAX_FRAME // 2  # JSON bytes of prompt + stops: the rest of a frame carries the answer
MAX_TOKEN_BYTES = 128  # no vocabulary token spans more text than this (see the module docstring)
CLIENT_GONE = "client disconnected"
LOGPROB_ENTRIES = (
    60_000  # max_tokens x (top_logprobs + 1): what one Commit frame carries at most (~50 B each)
)
Policy = Literal["best_effort", "fail", "return_all"]


@dataclass(frozen=True, slots=True)
class Started:
    """A submitted task: its spec, its run (answer future, stream queue) and the key's rate-limit headers."""

    spec: TaskSpec
    run: Run
    limits: dict[str, str] = field(default_factory=dict)
    policy: Policy = "best_effort"  # the request's disagreement_policy
    tools: bool = False  # the answer may be a tool call (tools offered, tool_choice not "none")

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    def verification(self, outcome: Outcome) -> dict[str, Any]:
        """The ``hivemesh`` block: the outcome's verification, with every miner's answer under ``return_all``."""
        block = outcome.verification()
        if self.policy == "return_all":
            block["answers"] = answers_of(self.run)
        return block

    def logprobs(self, outcome: Outcome) -> list[dict[str, Any]] | None:
        """The answer's logprobs (OpenAI's ``content`` list), when the request asked for them."""
        if self.spec.params.logprobs is None:
            return None
        return logprobs_of(self.run, outcome)

    def judged(self, outcome: Outcome) -> Outcome:
        """``outcome``, or a 409 when the policy is ``fail`` and the network did not verify it."""
        if self.policy == "fail" and outcome.verdict != "verified" and outcome.mode != "none":
            raise Conflict(
                f"the miners did not agree on an answer (verdict {outcome.verdict}); "
                "disagreement_policy 'fail' returns none",
                code="disagreement",
            )
        return outcome


def kind_of(body: Body) -> Kind:
    return "chat" if isinstance(body, ChatCompletionRequest) else "completion"


def user_error(exc: HivemeshError, kind: Kind) -> HivemeshError:
    """A miner's context-length refusal is the user's 400, not a miner failure (502, which clients retry)."""
    if isinstance(exc, ContextTooLong):  # the runners raise it when a miner refuses the prompt's length
        return ContextTooLong(exc.message, param="messages" if kind == "chat" else "prompt")
    return exc


async def answer_of(run: Run) -> Outcome:
    try:
        return await run.answer
    except HivemeshError as exc:
        raise user_error(exc, run.spec.kind) from None


class Completions:
    def __init__(self, service: RouterService) -> None:
        self.service = service

    async def start(
        self,
        principal: Principal,
        body: Body,
        *,
        session_id: str | None = None,
        durable: bool = False,
    ) -> Started:
        """Run ``body`` for ``principal`` in ``session_id`` (else the key's default session). Raises the
        request's error (400, 402, 404, 429, 503) before any miner works on it."""
        sessions = self.service.sessions
        if session_id:
            session = await sessions.get(session_id, owner=principal.owner)
            if not session.active:
                raise InvalidRequest(f"session {session_id!r} is deactivated", param="session_id")
        else:
            session = await sessions.default_for(principal.owner)
        spec = self.build_spec(session, body)
        limits = await self.rate_limit(principal, spec)
        run = await self.service.submit(
            spec, stream=body.stream, default_session=not session_id, durable=durable
        )
        policy = body.hivemesh.disagreement_policy if body.hivemesh is not None else "best_effort"
        tools = isinstance(body, ChatCompletionRequest) and bool(body.tools) and body.tool_choice != "none"
        return Started(spec, run, limits, policy=policy, tools=tools)

    async def answer(self, started: Started, until_gone: Awaitable[None] | None = None) -> Outcome:
        """The task's outcome; when ``until_gone`` (the caller's disconnect) resolves first, the task is
        cancelled on every miner and this raises its failure."""
        if until_gone is None:
            return started.judged(await answer_of(started.run))
        watch = asyncio.ensure_future(until_gone)
        tid = started.spec.id

        def gone(w: asyncio.Future[None]) -> None:
            if not w.cancelled() and w.exception() is None:
                self.service.cancel(tid, CLIENT_GONE)

        watch.add_done_callback(gone)
        try:
            return started.judged(await answer_of(started.run))
        finally:
            watch.cancel()

    def cancel(self, task_id: str, reason: str = CLIENT_GONE) -> bool:
        return self.service.cancel(task_id, reason)

    async def rate_limit(self, principal: Principal, spec: TaskSpec) -> dict[str, str]:
        """Enforce the key's requests/min and tokens/min (429 with retry-after), network-wide when the router is
        in a cluster (``router.limits``); the x-ratelimit-* headers."""
        if principal.key_id is None or (principal.rpm is None and principal.tpm is None):
            return {}
        tokens = (
            spec.params.max_tokens + len(spec.prompt) // 4 + sum(len(m.content) for m in spec.messages) // 4
        )
        state = await self.service.limiter.take(principal.key_id, principal.rpm, principal.tpm, tokens)
        return state.headers()

    def build_spec(self, session: SessionSpec, body: Body) -> TaskSpec:
        hub = self.service.hub
        if body.model not in hub.models():
            if body.model in hub.known_models:
                raise NoMinerAvailable(f"no connected miner serves '{body.model}' right now", retry_after=5)
            raise ModelNotFound(
                f"The model '{body.model}' does not exist or no miner serves it", param="model"
            )
        if session.model and session.model != body.model:
            raise InvalidRequest(f"session {session.id} is for model {session.model!r}", param="model")
        if refused := body.unserved():
            raise InvalidRequest(refused[1], param=refused[0])
        constraint: Constraint | None = None
        if isinstance(body, ChatCompletionRequest):
            shaped = shape(body)
            messages, prompt, constraint = shaped.messages, "", shaped.constraint
            if constraint is not None:
                self.check_served(body.model, "structured", shaped.param or "response_format")
        else:
            messages, prompt = (), body.text()
        self.check_fits(body, messages=messages, prompt=prompt)
        limit = body.token_limit()
        seed = body.engine_seed()
        max_tokens = min(limit or session.max_tokens, session.max_tokens)
        top = body.top_logprobs_wanted()
        if top is not None:
            self.check_served(body.model, "logprobs", "logprobs")
            if max_tokens * (top + 1) > LOGPROB_ENTRIES:
                raise InvalidRequest(
                    f"max_tokens x (top_logprobs + 1) may be at most {LOGPROB_ENTRIES} with logprobs; "
                    f"this request asks for {max_tokens} x {top + 1}. Lower max_tokens or top_logprobs.",
                    param="top_logprobs" if top else "max_tokens",
                )
        params = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            max_tokens=max_tokens,
            stop=body.stops(),
            seed=secrets.randbits(31) if seed is None else seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            constraint=constraint,
            logprobs=top,
        )
        if body.hivemesh is not None:
            session = with_consensus(session, body.hivemesh)
        return TaskSpec(
            id=new_task_id(),
            session=session,
            model=body.model,
            kind=kind_of(body),
            params=params,
            messages=messages,
            prompt=prompt,
            stream=body.stream,
            created_at=time.time(),
        )

    def check_served(self, model: str, feature: Literal["structured", "logprobs"], param: str) -> None:
        """Refuse a feature unless every connected miner serving ``model`` advertises it on its card."""
        if not self.service.hub.pool.all_have(model, feature):  # O(1): counted as nodes join and leave
            what = (
                "constrain their output (tools, response_format)"
                if feature == "structured"
                else "report logprobs"
            )
            raise InvalidRequest(
                f"'{param}' is not served for {model!r}: not every miner serving it can {what}. "
                "Remove it to run the request.",
                param=param,
            )

    def check_fits(self, body: Body, *, messages: tuple[ChatMessage, ...] = (), prompt: str = "") -> None:
        """Refuse a prompt that provably cannot fit the model's context, or a miner frame (module docstring)."""
        param = "messages" if messages else "prompt"
        texts = [m.content for m in messages] if messages else [prompt]
        framed = len(orjson.dumps([*texts, *body.stops()]))
        if framed > PROMPT_FRAME_BUDGET:
            raise ContextTooLong(
                f"This request's prompt is {framed} bytes; the network carries at most "
                f"{PROMPT_FRAME_BUDGET} bytes of prompt per task. Please reduce the length of the messages.",
                param=param,
            )
        context = self.service.hub.pool.max_context(body.model)  # not a scan of the nodes
        at_least = sum(len(t.encode()) for t in texts) // MAX_TOKEN_BYTES
        if context and at_least >= context:
            raise ContextTooLong(
                f"This model's maximum context length is {context} tokens. However, your prompt has at least "
                f"{at_least} tokens. Please reduce the length of the {param}.",
                param=param,
            )


def with_consensus(session: SessionSpec, consensus: Consensus) -> SessionSpec:
    """The session as this request's ``hivemesh`` field sets it (module docstring)."""
    k = consensus.redundancy
    if k is None:
        return session
    if session.mode == "token":
        if not 2 <= k <= MAX_VERIFIERS + 1:
            raise InvalidRequest(
                f"hivemesh.redundancy must be between 2 and {MAX_VERIFIERS + 1} in token mode "
                "(one generator and redundancy - 1 verifiers)",
                param="hivemesh.redundancy",
            )
        return replace(session, verifiers=k - 1)
    return replace(session, redundancy=k, quorum=k // 2 + 1)
