"""One connection per node in the whole cluster: which router holds a node is decided in one place, Redis.

A node (one identity) may dial several routers: two miner processes sharing a key, or a miner that moved to
another router while its old connection was still open there. If two routers both kept a link, each would check
the node's capacity against its own reservations only and the node would be booked twice. So the presence hash
``nodes`` names, for each node, the one router holding its connection, and a router takes a node only by
*claiming* that entry, atomically in Redis (``Presence.claim``): the claim succeeds when the entry is missing,
already this router's, or names a router whose heartbeat has expired; otherwise it answers the live holder's entry,
and the router refuses the connection (``wire.CLOSE_HELD_ELSEWHERE``, naming the holder). Its own tasks still reach
the node through the relay, and the refused miner backs off and dials again, so it lands here once its holder is
gone (a cleanly stopped router removes its entries at once; a killed one's heartbeat expires within its TTL).

The first live holder keeps the node, where on one router a new connection replaces the old one (``MinerHub``):
a router can tell its own connections apart and swap them at once, but it cannot see another router's socket, so
taking a node over would book it twice during the switch.

Two links can still exist for a moment: a connection accepted while the broker was unreachable (the claim fails
open, so a router keeps serving on its own), or entries lost with a broker restart. The tie-break is the entry
Redis holds (``holder_instead``): the router it names keeps its link, and every other router holding one closes it
(the same close code) when it sees that entry, through a presence join or when its resync claims its links again;
the closed link's tasks fail over as on any disconnect. Every router reads the same entry and no router overwrites
a live router's entry, so they all agree and the answer never flips back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from hivemesh.cluster.broker import Broker

# KEYS[1] the nodes hash; ARGV: node, this router, its entry (JSON), the heartbeat key prefix (``router:``).
# Returns the entry that stays (JSON) when a live router other than this one holds the node, else sets ours.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, entry = pcall(cjson.decode, cur)
  local holder = ok and type(entry) == 'table' and entry['router'] or nil
  if type(holder) == 'string' and holder ~= ARGV[2] and redis.call('EXISTS', ARGV[4] .. holder) == 1 then
    return cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return false
"""

# KEYS[1] the nodes hash; ARGV: node, this router, the connection's nonce. Deletes the entry only if it is that
# connection's (a newer connection of the node, here or elsewhere, keeps its entry). Returns 1 if deleted.
_FORGET = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, entry = pcall(cjson.decode, cur)
  if ok and type(entry) == 'table' and entry['router'] == ARGV[2] and entry['nonce'] == ARGV[3] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
"""


def holder_instead(me: str, entry: Mapping[str, Any] | None, live: Callable[[str], bool]) -> str | None:
    """The router that holds the node of ``entry`` (its presence entry as Redis has it) instead of ``me``, or None
    when ``me`` may keep (or take) it: the tie-break between two links to one node, the same on every router.

    The entry's router wins if its heartbeat lives (``live``); a missing entry, ``me``'s own, or a dead router's
    is no reason to yield (``me`` claims it). ``Presence.claim`` decides the same way, atomically, in Redis."""
    if entry is None:
        return None
    holder = entry.get("router")
    if not isinstance(holder, str) or holder == me or not live(holder):
        return None
    return holder


def refusal(node: str, holder: str) -> str:
    """The one sentence a refused (or closed) connection gets: short enough for a close frame (123 bytes)."""
    return f"node {node[:10]}... is connected through router {holder}; one connection per node"


class Presence:
    """The presence hash's writes that must not race: claiming a node's entry and forgetting a connection's."""

    def __init__(self, broker: Broker, me: str) -> None:
        self.broker = broker
        self.me = me
        self._claim = broker.redis.register_script(_CLAIM)
        self._forget = broker.redis.register_script(_FORGET)

    async def claim(self, node: str, entry: str) -> dict[str, Any] | None:
        """Make ``entry`` (this router's, JSON) the node's presence unless a live router holds it: then that
        router's entry (the node stays there), else None (it is ours now)."""
        held = await self._claim(
            keys=[self.broker.key("nodes")],
            args=[node, self.me, entry, self.broker.key("router", "")],
        )
        if held is None:
            return None
        out: dict[str, Any] = json.loads(held)
        return out

    async def forget(self, node: str, nonce: str) -> bool:
        """Delete the node's entry if it is still this router's connection ``nonce``: True if it was."""
        return bool(await self._forget(keys=[self.broker.key("nodes")], args=[node, self.me, nonce]))
