"""The asynchronous Session API client: ``Client``'s methods as coroutines, on ``httpx.AsyncClient``, with the
same typed results and errors, plus ``stream`` (text as the miner writes it, then the verdict).

    async with AsyncClient("http://127.0.0.1:8000", api_key="hm-...") as hm:
        session = await hm.create_session(name="research", mode="token")
        async for part in hm.stream(session.id, messages=[{"role": "user", "content": "Hi"}]):
            print(part.text if isinstance(part, Delta) else part.verdict)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Literal

import httpx

from hivemesh.client.sessions import (
    Account,
    Completion,
    Delta,
    Session,
    SessionMode,
    StreamReader,
    Task,
    _raise_for,
    completion_of,
    session_body,
    submit_body,
)


class AsyncClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/").removesuffix("/v1") + "/api/v1",
            headers={"authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = await self._http.request(method, path, **kw)
        _raise_for(r)
        return r.json()

    # ---------------------------------------------------------------- the router

    async def info(self) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("GET", "/info")
        return out

    # ---------------------------------------------------------------- sessions

    async def create_session(
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
        return Session.of(await self._call("POST", "/sessions", json=body))

    async def sessions(self) -> list[Session]:
        return [Session.of(j) for j in (await self._call("GET", "/sessions"))["data"]]

    async def session(self, session_id: str) -> Session:
        return Session.of(await self._call("GET", f"/sessions/{session_id}"))

    async def deactivate(self, session_id: str) -> Session:
        return Session.of(await self._call("POST", f"/sessions/{session_id}/deactivate"))

    async def fund(self, session_id: str, amount: int) -> int:
        """Move ``amount`` from the caller's account into the session's escrow; the escrow after it."""
        j = await self._call("POST", f"/sessions/{session_id}/deposit", json={"amount": amount})
        return int(j["escrow"])

    # ---------------------------------------------------------------- tasks

    async def submit(
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
        return completion_of(await self._call("POST", f"/completions/{session_id}", json=body), session_id)

    async def stream(
        self,
        session_id: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[Delta | Completion]:
        """``Delta`` pieces of text as the miner writes them, then the ``Completion`` with its verdict. Leaving
        the loop early closes the stream, which cancels the task on every miner."""
        body = submit_body(prompt, messages, model, max_tokens, temperature, seed) | {"stream": True}
        reader = StreamReader(session_id)
        async with self._http.stream("POST", f"/completions/{session_id}", json=body) as r:
            if r.status_code >= 400:
                await r.aread()
                _raise_for(r)
            async for line in r.aiter_lines():
                for delta in reader.feed(line):
                    yield delta
        yield reader.end()

    async def tasks(self, session_id: str, *, limit: int = 100) -> list[Task]:
        j = await self._call("GET", f"/tasks/{session_id}", params={"limit": limit})
        return [Task.of(t) for t in j["data"]]

    async def task(self, session_id: str, task_id: str) -> Task:
        """The task record with its PoUW history and each miner's assignment, precommit and reveal."""
        return Task.of(await self._call("GET", f"/tasks/{session_id}/{task_id}"))

    # ---------------------------------------------------------------- money

    async def balance(self, address: str) -> Account:
        return Account.of(await self._call("GET", f"/accounts/{address}"))
