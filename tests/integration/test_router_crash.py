"""A real router process SIGKILLed under billed load and restarted on the same data dir leaves nothing behind:
no locked hold of an ended task, no orphan hold, no answered task unbilled; the ledger verifies against the
router's signed checkpoint and COR is conserved. (``python -m bench.crash --kills 10`` does the same ten times.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.crash import crash_run


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_sigkilled_router_leaves_no_hold_locked_and_no_answer_unbilled(tmp_path: Path) -> None:
    report = crash_run(tmp_path, kills=3, load_s=2.0, concurrency=12)
    assert report.statuses.get("200", 0) > 0, report.statuses  # the load was served between the kills
    assert report.settled > 0
    assert report.locked_ended == 0, "holds of ended or failed tasks still locked"
    assert report.orphans == 0, "holds without a task row still locked"
    assert report.unbilled == 0, "tasks answered with a cost whose hold is not settled"
    assert report.answered_unbilled == 0, "verified answers the client received that nobody paid for"
    assert report.held == 0
    assert report.verify_ok, report.verify_output
    assert "signed checkpoint" in report.verify_output
    assert report.conserved, (report.balance_sum, report.outside_world, report.deposits)
