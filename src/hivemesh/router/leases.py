"""Named leases in the database: one holder at a time, for a bounded time (the validators' leadership).

``acquire`` is atomic on SQLite and PostgreSQL alike: an ``INSERT ... ON CONFLICT DO NOTHING`` creates the lease
if nobody ever held it, otherwise one conditional ``UPDATE ... WHERE holder = me OR expires_at < now`` takes or
renews it. Whoever's statement the database applies first wins; the loser reads the winner's row. Several routers
sharing one PostgreSQL therefore agree on the holder too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hivemesh.store import schema as s
from hivemesh.store.db import Store


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str | None
    expires_at: float  # unix time

    def held_by(self, holder: str, now: float | None = None) -> bool:
        return self.holder == holder and self.expires_at > (time.time() if now is None else now)


class Leases:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def acquire(self, name: str, holder: str, ttl_s: float) -> Lease:
        """Take or renew ``name`` for ``ttl_s`` seconds if it is free, expired or already ``holder``'s; with
        ``ttl_s == 0`` give it up (only its holder can). Returns the lease as it now stands."""
        now = time.time()
        t = s.leases
        async with self.store.engine.begin() as conn:
            if ttl_s <= 0:
                await conn.execute(
                    update(t)
                    .where(t.c.name == name, t.c.holder == holder)
                    .values(expires_at=now, updated_at=now)
                )
            else:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                ins = dialect.insert(t).values(
                    name=name, holder=holder, expires_at=now + ttl_s, updated_at=now
                )
                res = await conn.execute(ins.on_conflict_do_nothing(index_elements=["name"]))
                if res.rowcount == 0:
                    await conn.execute(
                        update(t)
                        .where(t.c.name == name, or_(t.c.holder == holder, t.c.expires_at < now))
                        .values(holder=holder, expires_at=now + ttl_s, updated_at=now)
                    )
            row = (await conn.execute(select(t).where(t.c.name == name))).mappings().first()
        if row is None:
            return Lease(name, None, 0.0)
        return Lease(name, row["holder"], row["expires_at"])

    async def get(self, name: str) -> Lease:
        row = await self.store.fetch_one(select(s.leases).where(s.leases.c.name == name))
        return Lease(name, None, 0.0) if row is None else Lease(name, row["holder"], row["expires_at"])
