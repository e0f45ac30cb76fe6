"""The synchronous Session API client, on httpx.

Results are frozen dataclasses with the fields a caller reads most, plus ``raw`` (the whole JSON object, for
fields added later). An error answer raises the matching ``hivemesh.errors`` class, carrying the router's message,
``param`` and ``code``: the same hierarchy the router raises, so one ``except`` serves both sides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx

from hivemesh import errors

_BY_CODE: dict[str, type[errors.HivemeshError]] = {
    "context_length_exceeded": errors.ContextTooLong,
    "model_not_found": errors.ModelNotFound,
    "no_miner_available": errors.NoMinerAvailable,
    "insufficient_funds": errors.InsufficientFunds,
}
_BY_STATUS: dict[int, type[errors.HivemeshError]] = {
    400: errors.InvalidRequest,
    401: errors.AuthenticationFailed,
    402: errors.PaymentRequired,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    429: errors.RateLimited,
    502: errors.UpstreamFailed,
    503: errors.ServiceUnavailable,
    504: errors.Timeout,
}


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        message, param, code = str(err["message"]), err.get("param"), err.get("code")
    except (ValueError, KeyError, TypeError):
        message, param, code = f"HTTP {r.status_code}: {r.text[:300]}", None, None
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(r.status_code, errors.HivemeshError)
    headers = {k: v for k, v in r.headers.items() if k in ("retry-after", "x-request-id")}
    exc = cls(message, param=param, code=code, headers=headers)
    exc.status = r.status_code
    raise exc


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    name: str
    model: str | None
    redundancy: int
    quorum: int
    mode: str
    max_tokens: int
    active: bool
    raw: dict[str, Any]

    @classmethod
    def of(cls, j: dict[str, Any]) -> Session:
        return cls(
            id=j["id"],
            name=j["name"],
            model=j["model"],
            redundancy=j["redundancy"],
            quorum=j["quorum"],
            mode=j["mode"],
            max_tokens=j["max_tokens"],
            active=j["active"],
            raw=j,
        )


@dataclass(frozen=True, slots=True)
class Task:
    """A task record: its PoUW phase and verdict, the answer, and (from ``Client.task``) each miner's part."""

    id: str
    session_id: str
    phase: str
    verdict: str | None
    answer: str | None
    seed: int
    miners: list[dict[str, Any]]
    history: list[dict[str, Any]]
    raw: dict[str, Any]

    @classmethod
    def of(cls, j: dict[str, Any]) -> Task:
        return cls(
            id=j["id"],
            session_id=j["session_id"],
            phase=j["phase"],
            verdict=j["verdict"],
            answer=j["answer"],
            seed=j["seed"],
            miners=j.get("miners") or [],
            history=j.get("history") or [],
            raw=j,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished submission: the text and the verification block. ``text`` is None for ``wait=False``."""

    task_id: str
    session_id: str
    text: str | None
    finish_reason: str | None
    verdict: str | None
    verification: dict[str, Any]
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed answer, as the miner wrote it."""

    text: str


@dataclass(frozen=True, slots=True)
class Account:
    """Amounts in the smallest unit (10**-18 COR)."""

    address: str
    balance: int
    staked: int
    earned: int
    raw: dict[str, Any]

    @classmethod
    def of(cls, j: dict[str, Any]) -> Account:
        return cls(
            address=j["address"],
            balance=int(j["balance"]),
            staked=int(j["staked"]),
            earned=int(j["earned"]),
            raw=j,
        )


SessionMode = Literal["token", "exact", "semantic", "none"]


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/").removesuffix("/v1") + "/api/v1",
            headers={"authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, path, **kw)
        _raise_for(r)
        return r.json()

    # ---------------------------------------------------------------- the router

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", "/info")
        return out

    # ---------------------------------------------------------------- sessions

    def create_session(
        self,
        *,
        name: str = "",
        model: str | None = None,
        redundancy: int | None = None,
        quorum: int | None = None,
        mode: SessionMode | None = None,
        max_tokens: int | None = None,
        sla: Literal["low", "medium", "high"] | None = None,
        metadata: dict[str, Any] | None = None,
        **settings: Any,  # threshold, ack_timeout_s, precommit_timeout_s, commit_timeout_s, ...
    ) -> Session:
        body = session_body(name, model, redundancy, quorum, mode, max_tokens, sla, metadata, settings)
        return Session.of(self._call("POST", "/sessions", json=body))

    def sessions(self) -> list[Session]:
        return [Session.of(j) for j in self._call("GET", "/sessions")["data"]]

    def session(self, session_id: str) -> Session:
        return Session.of(self._call("GET", f"/sessions/{session_id}"))

    def deactivate(self, session_id: str) -> Session:
        return Session.of(self._call("POST", f"/sessions/{session_id}/deactivate"))

    def fund(self, session_id: str, amount: int) -> int:
        """Move ``amount`` from the caller's account into the session's escrow; the escrow after it."""
        return int(self._call("POST", f"/sessions/{session_id}/deposit", json={"amount": amount})["escrow"])

    # ---------------------------------------------------------------- tasks

    def submit(
        self,
        session_id: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        wait: bool = True,
    ) -> Completion:
        """Run a prompt or chat messages in the session; with ``wait=False``, return at once with the task id
        (then poll ``task``)."""
        body = submit_body(prompt, messages, model, max_tokens, temperature, seed) | {"wait": wait}
        return completion_of(self._call("POST", f"/completions/{session_id}", json=body), session_id)

    def stream(
        self,
        session_id: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> Iterator[Delta | Completion]:
        """Stream a submission: ``Delta`` pieces of text as the miner writes them, then the ``Completion`` with
        its verdict (the verification block)."""
        body = submit_body(prompt, messages, model, max_tokens, temperature, seed) | {"stream": True}
        reader = StreamReader(session_id)
        with self._http.stream("POST", f"/completions/{session_id}", json=body) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            for line in r.iter_lines():
                yield from reader.feed(line)
        yield reader.end()

    def tasks(self, session_id: str, *, limit: int = 100) -> list[Task]:
        return [
            Task.of(j) for j in self._call("GET", f"/tasks/{session_id}", params={"limit": limit})["data"]
        ]

    def task(self, session_id: str, task_id: str) -> Task:
        """The task record with its PoUW history and each miner's assignment, precommit and reveal."""
        return Task.of(self._call("GET", f"/tasks/{session_id}/{task_id}"))

    # ---------------------------------------------------------------- money

    def balance(self, address: str) -> Account:
        return Account.of(self._call("GET", f"/accounts/{address}"))


def session_body(
    name: str,
    model: str | None,
    redundancy: int | None,
    quorum: int | None,
    mode: str | None,
    max_tokens: int | None,
    sla: str | None,
    metadata: dict[str, Any] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    given = {
        "model": model,
        "redundancy": redundancy,
        "quorum": quorum,
        "mode": mode,
        "max_tokens": max_tokens,
        "sla": sla,
        **settings,
    }
    return {"name": name, "metadata": metadata or {}} | {k: v for k, v in given.items() if v is not None}


def submit_body(
    prompt: str | None,
    messages: list[dict[str, Any]] | None,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
) -> dict[str, Any]:
    given = {
        "prompt": prompt,
        "messages": messages,
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    return {k: v for k, v in given.items() if v is not None}


def completion_of(j: dict[str, Any], session_id: str) -> Completion:
    if "choices" not in j:  # wait=False: the task is queued
        return Completion(j["id"], session_id, None, None, None, {}, j)
    choice = j["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    block = j.get("hivemesh") or {}
    return Completion(
        block.get("task_id", ""), session_id, text, choice["finish_reason"], block.get("verdict"), block, j
    )


class StreamReader:
    """Turns the Session API's server-sent events into ``Delta`` pieces and, at the end, the ``Completion``
    (text, finish reason, usage and the verification block, which ride on the last chunks)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.parts: list[str] = []
        self.finish: str | None = None
        self.block: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def feed(self, line: str) -> list[Delta]:
        if not line.startswith("data: ") or line == "data: [DONE]":
            return []
        j = json.loads(line[6:])
        if "error" in j:
            err = j["error"]
            cls = _BY_CODE.get(err.get("code") or "") or errors.HivemeshError
            raise cls(str(err.get("message")), param=err.get("param"), code=err.get("code"))
        self.last = j
        self.block = j.get("hivemesh") or self.block
        out: list[Delta] = []
        for choice in j.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            if text:
                self.parts.append(text)
                out.append(Delta(text))
            self.finish = choice.get("finish_reason") or self.finish
        return out

    def end(self) -> Completion:
        if not self.block:
            raise errors.HivemeshError("the stream ended without its verification block")
        text = "".join(self.parts)
        return Completion(
            self.block.get("task_id", ""),
            self.session_id,
            text,
            self.finish,
            self.block.get("verdict"),
            self.block,
            self.last,
        )
