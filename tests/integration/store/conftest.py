"""The store's integration tests reuse the ledger tests' PostgreSQL fixtures (a throwaway server from Debian's
binaries, a fresh database per test)."""

from tests.integration.ledger.conftest import pg_database, pg_server

__all__ = ["pg_database", "pg_server"]
