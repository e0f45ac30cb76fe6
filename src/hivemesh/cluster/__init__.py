"""The cluster's shared services: the broker (Redis) that several routers use beside their shared database, and
private servers of both (``RedisServer``, ``PgServer``, from Debian's binaries) for tests and ``hivemesh up``.

PostgreSQL stays the durable record (tasks, sessions, ledger, reputation); Redis holds what is per message or
expires: presence, network-wide rate-limit counters, pub/sub invalidations and relayed messages.
"""

from hivemesh.cluster.postgres_server import PgServer, PgUnavailable
from hivemesh.cluster.redis_server import BrokerUnavailable, RedisServer

__all__ = ["BrokerUnavailable", "PgServer", "PgUnavailable", "RedisServer"]
