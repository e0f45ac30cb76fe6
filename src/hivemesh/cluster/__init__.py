"""The cluster's shared services: the broker (Redis) that several routers use beside their shared database.

PostgreSQL stays the durable record (tasks, sessions, ledger, reputation); Redis holds what is per message or
expires: presence, network-wide rate-limit counters, pub/sub invalidations and relayed messages.
"""

from hivemesh.cluster.redis_server import BrokerUnavailable, RedisServer

__all__ = ["BrokerUnavailable", "RedisServer"]
