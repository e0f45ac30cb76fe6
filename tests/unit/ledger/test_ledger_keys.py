"""API keys: only a hash is stored; revoked and expired keys fail; the cache never outlives a revoke."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from hivemesh.errors import AuthenticationFailed, NotFound
from hivemesh.ledger import Ledger
from hivemesh.ledger.db import Database

from .ledger_helpers import FakeClock


async def test_a_new_key_authenticates_as_its_account(ledger: Ledger, user: str) -> None:
    key_id, secret = await ledger.create_key(user.lower(), name="laptop", rpm=60, tpm=10_000, budget=5)
    assert re.fullmatch(r"hm-[A-Za-z0-9_-]{40}", secret)
    info = await ledger.authenticate(secret)
    assert (info.key_id, info.account, info.name, info.rpm, info.tpm, info.budget) == (
        key_id,
        user,
        "laptop",
        60,
        10_000,
        5,
    )
    assert [k.key_id for k in await ledger.list_keys(user)] == [key_id]


async def test_the_secret_is_stored_nowhere_only_its_hash(ledger: Ledger, user: str, db_path: Path) -> None:
    _, secret = await ledger.create_key(user)
    await ledger.authenticate(secret)
    await ledger.close()  # checkpoints the WAL into the main file
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    blob = b"".join(p.read_bytes() for p in files)
    assert secret.encode() not in blob
    assert secret[3:].encode() not in blob
    import hashlib

    assert hashlib.sha256(secret.encode()).hexdigest().encode() in blob


@pytest.mark.parametrize(
    "secret", ["", "sk-nope", "hm-" + "x" * 40, "hm-" + "x" * 4000, "hm-\x00\n" + "y" * 38]
)
async def test_unknown_keys_get_openais_message(ledger: Ledger, secret: str) -> None:
    with pytest.raises(AuthenticationFailed, match=r"^Incorrect API key provided: ") as e:
        await ledger.authenticate(secret)
    assert e.value.status == 401
    assert e.value.code == "invalid_api_key"
    assert "x" * 10 not in e.value.message and "\x00" not in e.value.message  # the secret is masked


async def test_revoke_takes_effect_at_once_despite_the_cache(ledger: Ledger, user: str) -> None:
    key_id, secret = await ledger.create_key(user)
    await ledger.authenticate(secret)  # now cached
    await ledger.revoke(key_id)
    with pytest.raises(AuthenticationFailed):
        await ledger.authenticate(secret)
    await ledger.revoke(key_id)  # revoking twice is fine
    with pytest.raises(NotFound):
        await ledger.revoke("key_unknown")
    [listed] = await ledger.list_keys(user)
    assert listed.revoked_at is not None


async def test_expired_keys_fail_even_when_cached(ledger: Ledger, user: str, clock: FakeClock) -> None:
    _, secret = await ledger.create_key(user, expires_at=clock.now + timedelta(hours=1))
    await ledger.authenticate(secret)
    clock.advance(timedelta(hours=1))
    with pytest.raises(AuthenticationFailed, match="Incorrect API key provided"):
        await ledger.authenticate(secret)


async def test_the_hot_path_reads_the_database_once_per_ttl(
    ledger: Ledger, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = await ledger.create_key(user)
    reads = 0
    original = Database.read

    def counting(self: Database, **kw: bool):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return original(self, **kw)

    monkeypatch.setattr(Database, "read", counting)
    for _ in range(50):
        await ledger.authenticate(secret)
    assert reads == 1
