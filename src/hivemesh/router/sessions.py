"""Sessions: the contract a user's tasks run under (model, k, m, validation mode, timeouts, SLA tier).

Every API key (owner) has a default session, made on first use from the router's configured defaults; other
sessions are created through the Session API. Sessions are cached in memory after a read, for ``ttl_s``: several
routers share the sessions table, and a change made on one (a deactivation) must reach the others within a second.
Without a broker the TTL is that second; with one, a change is announced (``on_change``: the cluster publishes it,
and every router ``forget``s the session at once) and the TTL is only a safety net.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import insert, select, update

from hivemesh.config import SessionDefaults
from hivemesh.errors import InvalidRequest, NotFound, PermissionDenied
from hivemesh.router.domain import SessionSpec
from hivemesh.store import schema as s
from hivemesh.store.db import Row, Store

MAX_REDUNDANCY = 16
MAX_VERIFIERS = 8


def validate(spec: SessionSpec) -> SessionSpec:
    if not 1 <= spec.redundancy <= MAX_REDUNDANCY:
        raise InvalidRequest(f"redundancy must be between 1 and {MAX_REDUNDANCY}", param="redundancy")
    if not 1 <= spec.quorum <= spec.redundancy:
        raise InvalidRequest("quorum must be between 1 and redundancy", param="quorum")
    if spec.mode not in ("token", "exact", "semantic", "none"):
        raise InvalidRequest("mode must be one of token, exact, semantic, none", param="mode")
    if not 1 <= spec.verifiers <= MAX_VERIFIERS:
        raise InvalidRequest(f"verifiers must be between 1 and {MAX_VERIFIERS}", param="verifiers")
    if spec.tolerance not in ("calibrated", "exact"):
        raise InvalidRequest("tolerance must be one of calibrated, exact", param="tolerance")
    if not 0.0 < spec.threshold <= 1.0:
        raise InvalidRequest("threshold must be in (0, 1]", param="threshold")
    for name in ("ack_timeout_s", "precommit_timeout_s", "commit_timeout_s"):
        if not 0.0 < getattr(spec, name) <= 3600:
            raise InvalidRequest(f"{name} must be in (0, 3600]", param=name)
    if not 1 <= spec.max_tokens <= 100_000:
        raise InvalidRequest("max_tokens must be between 1 and 100000", param="max_tokens")
    if spec.sla not in ("low", "medium", "high"):
        raise InvalidRequest("sla must be one of low, medium, high", param="sla")
    return spec


def _from_row(r: Row) -> SessionSpec:
    return SessionSpec(
        id=r["id"],
        owner=r["owner"],
        redundancy=r["redundancy"],
        quorum=r["quorum"],
        mode=r["mode"],
        threshold=r["threshold"],
        ack_timeout_s=r["ack_timeout_ms"] / 1000,
        precommit_timeout_s=r["precommit_timeout_ms"] / 1000,
        commit_timeout_s=r["commit_timeout_ms"] / 1000,
        max_tokens=r["max_tokens"],
        sla=r["sla"],
        verifiers=r["verifiers"],
        tolerance=r["tolerance"],
        model=r["model"],
        name=r["name"],
        meta=r["meta"] or {},
        active=r["active"],
        created_at=r["created_at"],
    )


def _to_row(spec: SessionSpec, *, is_default: bool) -> Row:
    return {
        "id": spec.id,
        "owner": spec.owner,
        "name": spec.name,
        "model": spec.model,
        "redundancy": spec.redundancy,
        "quorum": spec.quorum,
        "mode": spec.mode,
        "threshold": spec.threshold,
        "ack_timeout_ms": int(spec.ack_timeout_s * 1000),
        "precommit_timeout_ms": int(spec.precommit_timeout_s * 1000),
        "commit_timeout_ms": int(spec.commit_timeout_s * 1000),
        "max_tokens": spec.max_tokens,
        "sla": spec.sla,
        "verifiers": spec.verifiers,
        "tolerance": spec.tolerance,
        "meta": spec.meta,
        "active": spec.active,
        "is_default": is_default,
        "created_at": spec.created_at,
    }


def to_json(spec: SessionSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "object": "session",
        "owner": spec.owner,
        "name": spec.name,
        "model": spec.model,
        "redundancy": spec.redundancy,
        "quorum": spec.quorum,
        "mode": spec.mode,
        "verifiers": spec.verifiers,
        "tolerance": spec.tolerance,
        "threshold": spec.threshold,
        "ack_timeout_s": spec.ack_timeout_s,
        "precommit_timeout_s": spec.precommit_timeout_s,
        "commit_timeout_s": spec.commit_timeout_s,
        "max_tokens": spec.max_tokens,
        "sla": spec.sla,
        "metadata": spec.meta,
        "active": spec.active,
        "created_at": int(spec.created_at),
    }


class Sessions:
    def __init__(
        self,
        store: Store,
        defaults: SessionDefaults,
        *,
        ttl_s: float = 1.0,
        on_change: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.defaults = defaults
        self.ttl_s = (
            ttl_s  # a cached session is read again after this long (other routers may have changed it)
        )
        self.on_change = on_change  # announces a changed session to the other routers (the cluster's broker)
        self._cache: dict[str, tuple[SessionSpec, float]] = {}  # id -> (session, monotonic time of the read)
        self._creating: dict[str, asyncio.Lock] = {}

    def _cached(self, session_id: str) -> SessionSpec | None:
        hit = self._cache.get(session_id)
        if hit is None:
            return None
        if time.monotonic() - hit[1] >= self.ttl_s:
            del self._cache[session_id]
            return None
        return hit[0]

    def _keep(self, spec: SessionSpec) -> SessionSpec:
        self._cache[spec.id] = (spec, time.monotonic())
        return spec

    def forget(self, session_id: str | None = None) -> None:
        """Drop a cached session (another router changed it), or every cached session (``None``)."""
        if session_id is None:
            self._cache.clear()
        else:
            self._cache.pop(session_id, None)

    def template(self, owner: str) -> SessionSpec:
        d = self.defaults
        return SessionSpec(
            id="",
            owner=owner,
            redundancy=d.redundancy,
            quorum=d.quorum,
            mode=d.mode,
            threshold=d.threshold,
            ack_timeout_s=d.ack_timeout_s,
            precommit_timeout_s=d.precommit_timeout_s,
            commit_timeout_s=d.commit_timeout_s,
            max_tokens=d.max_tokens,
            sla=d.sla,
            verifiers=d.verifiers,
            tolerance=d.tolerance,
        )

    async def create(self, owner: str, **fields: Any) -> SessionSpec:
        try:
            spec = replace(
                self.template(owner), id="ses_" + uuid.uuid4().hex[:24], created_at=time.time(), **fields
            )
        except TypeError as exc:
            raise InvalidRequest(f"unknown session field: {exc}") from None
        validate(spec)
        await self.store.write(insert(s.sessions).values(**_to_row(spec, is_default=False)))
        return self._keep(spec)

    async def get(self, session_id: str, *, owner: str | None = None) -> SessionSpec:
        spec = self._cached(session_id)
        if spec is None:
            row = await self.store.fetch_one(select(s.sessions).where(s.sessions.c.id == session_id))
            if row is None:
                raise NotFound(f"session {session_id!r} not found", param="session_id")
            spec = self._keep(_from_row(row))
        if owner is not None and spec.owner != owner:
            raise PermissionDenied(f"session {session_id!r} belongs to another account", param="session_id")
        return spec

    async def default_for(self, owner: str) -> SessionSpec:
        sid = "ses_default_" + hashlib.sha256(owner.encode()).hexdigest()[:20]
        if (hit := self._cached(sid)) is not None:
            return hit
        async with self._creating.setdefault(sid, asyncio.Lock()):  # one creator per owner in this process
            return await self._default(owner, sid)

    async def _default(self, owner: str, sid: str) -> SessionSpec:
        try:
            return await self.get(sid)
        except NotFound:
            spec = replace(self.template(owner), id=sid, name="default", created_at=time.time())
            try:
                await self.store.write(insert(s.sessions).values(**_to_row(spec, is_default=True)))
            except Exception:  # a concurrent first request made it
                self._cache.pop(sid, None)
                return await self.get(sid)
            return self._keep(spec)

    async def list(self, owner: str | None = None, limit: int = 100) -> list[SessionSpec]:
        q = select(s.sessions).order_by(s.sessions.c.created_at.desc()).limit(limit)
        if owner is not None:
            q = q.where(s.sessions.c.owner == owner)
        return [_from_row(r) for r in await self.store.fetch_all(q)]

    async def deactivate(self, session_id: str, *, owner: str | None = None) -> SessionSpec:
        spec = await self.get(session_id, owner=owner)
        await self.store.write(update(s.sessions).where(s.sessions.c.id == session_id).values(active=False))
        spec = self._keep(replace(spec, active=False))
        if self.on_change is not None:
            await self.on_change(session_id)
        return spec
