"""Fixtures for the ledger integration tests: ``ledger_url`` is parametrised over both back-ends, so each test
runs on SQLite and, marked ``postgres``, on PostgreSQL (``pg_server`` / ``pg_database`` come from
``tests/integration/servers.py``, shared with every integration directory: one PostgreSQL server per session).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ledger URL on each back-end: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_database"))
