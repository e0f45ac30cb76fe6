"""A throwaway PostgreSQL server for tests and benchmarks: ``hivemesh.cluster.postgres_server`` (also started by
``hivemesh up --routers N``), re-exported here for ``bench/bench_ledger.py``, which imports this file by path.

``with PgServer.start() as server: server.url`` runs ``initdb`` into a temporary directory and ``postgres`` on a
free loopback port, waits until it accepts connections, and stops it and removes the directory on exit.
"""

from hivemesh.cluster.postgres_server import INSTALL_HINT, PgServer, PgUnavailable, find_bindir

__all__ = ["INSTALL_HINT", "PgServer", "PgUnavailable", "find_bindir"]
