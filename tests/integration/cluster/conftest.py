"""Two routers in one test: two ``Network``s on one event-loop thread, each with its own data dir (and key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ...conftest import LoopThread, Network


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Network, Network]]:
    lt = LoopThread()
    a, b = Network(lt, tmp_path / "a"), Network(lt, tmp_path / "b")
    try:
        yield a, b
    finally:
        try:
            b.close()
            a.close()
        finally:
            lt.stop()
