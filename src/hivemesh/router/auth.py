"""Who is calling: turns an ``Authorization: Bearer`` header into a principal (the owner of sessions and spend).

``StaticKeys`` accepts the sha256 of configured keys (``hivemesh up`` makes one); with none configured the router
is open and every caller is the ``anonymous`` principal (for local development only). The ledger's API keys plug
in behind the same two-method seam.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from hivemesh.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str  # account that owns sessions and pays for them
    key_id: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    admin: bool = False  # a router static key: may use the admin endpoints
    budget: int | None = None  # the key's spending cap (smallest unit), enforced by the ledger at reserve


# The principal of the request being served (set by ``authenticate``, so it follows the request's own asyncio
# task into the service): billing reads it to count a reservation against the calling key's budget on every
# path that submits work, whichever API the request came through.
current_principal: ContextVar[Principal | None] = ContextVar("hivemesh_principal", default=None)


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> Principal: ...


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Provide it in the Authorization header (Authorization: Bearer YOUR_KEY)."
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer YOUR_KEY'.")
    return token.strip()


class StaticKeys:
    def __init__(self, hashes: tuple[str, ...]) -> None:
        self.hashes = frozenset(hashes)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self.hashes:
            return _enter(Principal(owner="anonymous"))
        h = key_hash(bearer(authorization))
        if h not in self.hashes:
            raise AuthenticationFailed("Incorrect API key provided.")
        return _enter(Principal(owner="key:" + h[:16], key_id=h[:16], admin=True))


class LedgerKeys:
    """The router's static keys (admin; not billed), then the ledger's API keys (bound to an account)."""

    def __init__(self, static: StaticKeys, ledger: Any) -> None:
        self.static = static
        self.ledger = ledger

    async def authenticate(self, authorization: str | None) -> Principal:
        secret = bearer(authorization)
        h = key_hash(secret)
        if h in self.static.hashes:
            return _enter(Principal(owner="key:" + h[:16], key_id=h[:16], admin=True))
        info = await self.ledger.authenticate(secret)
        return _enter(
            Principal(owner=info.account, key_id=info.key_id, rpm=info.rpm, tpm=info.tpm, budget=info.budget)
        )


def _enter(principal: Principal) -> Principal:
    current_principal.set(principal)
    return principal
