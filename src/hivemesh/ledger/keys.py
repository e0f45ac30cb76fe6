"""API keys: ``hm-`` + 40 url-safe characters, stored only as their SHA-256.

``authenticate`` sits on the router's hot path, so a small in-process cache answers repeat lookups for a few
seconds without a database read. ``revoke`` drops the key from this process's cache at once; another process
sharing the database notices within one cache TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update

from hivemesh.errors import AuthenticationFailed, LedgerError, NotFound
from hivemesh.ledger import accounts as acc
from hivemesh.ledger.accounts import from_us, to_us
from hivemesh.ledger.db import Database
from hivemesh.ledger.schema import api_keys

PREFIX = "hm-"
_SECRET_CHARS = 40  # token_urlsafe(30) -> exactly 40 characters
_CACHE_MAX = 10_000
_BY_DIGEST = select(api_keys).where(api_keys.c.secret_sha256 == bindparam("digest"))


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    account: str
    name: str
    rpm: int | None  # requests per minute, None = unlimited
    tpm: int | None  # tokens per minute, None = unlimited
    expires_at: datetime | None
    budget: int | None = None  # spending cap in the smallest unit, enforced by the caller; None = none
    created_at: datetime | None = None
    revoked_at: datetime | None = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _masked(secret: str) -> str:
    shown = secret[:3] + "*" * 4 + secret[-4:] if 12 <= len(secret) <= 200 else "****"
    return "".join(c if c.isprintable() else "?" for c in shown)


def _refused(secret: str) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"Incorrect API key provided: {_masked(secret)}. You can find your API keys with `hivemesh keys list`."
    )


def _limit(value: int | None, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise LedgerError(f"{what} must be a positive int or None, got {value!r}", param=what)
    return value


class KeyStore:
    def __init__(self, db: Database, clock: Callable[[], datetime], cache_ttl: float = 5.0) -> None:
        self._db = db
        self._clock = clock
        self._ttl = cache_ttl
        self._cache: dict[str, tuple[KeyInfo, float]] = {}  # sha256 -> (info, monotonic deadline)
        self._generation = 0  # bumped by revoke: a lookup that raced a revoke is not cached

    async def create_key(
        self,
        account: str,
        *,
        name: str = "",
        expires_at: datetime | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: int | None = None,
    ) -> tuple[str, str]:
        """Create a key for ``account``; return ``(key_id, secret)``. The secret is shown once, never stored."""
        account = acc.holder(account)
        if budget is not None:
            acc.amount(budget, "budget", allow_zero=True)
        if len(name) > 200:
            raise LedgerError("key name is limited to 200 characters", param="name")
        key_id = "key_" + secrets.token_hex(12)
        secret = PREFIX + secrets.token_urlsafe(30)
        async with self._db.write() as conn:
            await conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    account=account,
                    name=name,
                    secret_sha256=_digest(secret),
                    created_us=to_us(self._clock()),
                    expires_us=None if expires_at is None else to_us(expires_at),
                    rpm=_limit(rpm, "rpm"),
                    tpm=_limit(tpm, "tpm"),
                    budget=budget,
                )
            )
        return key_id, secret

    async def authenticate(self, secret: str) -> KeyInfo:
        """The key's owner and limits, or ``AuthenticationFailed`` for an unknown, revoked or expired key."""
        if (
            not isinstance(secret, str)
            or not secret.startswith(PREFIX)
            or len(secret) != len(PREFIX) + _SECRET_CHARS
        ):
            raise _refused(secret if isinstance(secret, str) else "")
        digest = _digest(secret)
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > time.monotonic():
            info = hit[0]
        else:
            generation = self._generation
            async with self._db.read() as conn:
                row = (await conn.execute(_BY_DIGEST, {"digest": digest})).first()
            if row is None or row.revoked_us is not None:
                self._cache.pop(digest, None)
                raise _refused(secret)
            info = _info(row)
            if generation == self._generation:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (info, time.monotonic() + self._ttl)
        if info.expires_at is not None and self._clock() >= info.expires_at:
            raise _refused(secret)
        return info

    async def revoke(self, key_id: str) -> None:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_us.is_(None))
                .values(revoked_us=to_us(self._clock()))
                .returning(api_keys.c.key_id)
            )
            revoked = result.first() is not None
            if not revoked:
                exists = (
                    await conn.execute(select(api_keys.c.key_id).where(api_keys.c.key_id == key_id))
                ).first()
                if exists is None:
                    raise NotFound(f"No API key {key_id!r}.", param="key_id")
        self._generation += 1
        for digest in [d for d, (info, _) in self._cache.items() if info.key_id == key_id]:
            del self._cache[digest]

    async def list_keys(self, account: str) -> list[KeyInfo]:
        account = acc.holder(account)
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(api_keys)
                .where(api_keys.c.account == account)
                .order_by(api_keys.c.created_us, api_keys.c.key_id)
            )
            return [_info(r) for r in rows]


def _info(row: Row[Any]) -> KeyInfo:
    r = row._mapping
    return KeyInfo(
        key_id=r["key_id"],
        account=r["account"],
        name=r["name"],
        rpm=r["rpm"],
        tpm=r["tpm"],
        expires_at=None if r["expires_us"] is None else from_us(r["expires_us"]),
        budget=r["budget"],
        created_at=from_us(r["created_us"]),
        revoked_at=None if r["revoked_us"] is None else from_us(r["revoked_us"]),
    )
