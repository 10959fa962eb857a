"""kill -9 of a real `actprm run`, then a plain rerun (issue 41): the rerun continues the killed run's loop, buys no
more labels than the plan, registers one version per round, and resumes training from the killed run's checkpoint.
Real processes and a real SIGKILL (actprm/testing/crash.py); the tiny preset on a 120-trajectory pool."""

from __future__ import annotations

import pytest

from actprm.testing import crash

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS, LABELS_PER_ROUND = 2, 20


@pytest.mark.parametrize("point", crash.KILL_POINTS)
def test_a_rerun_after_kill_9_continues_the_loop_instead_of_buying_it_again(point, tmp_path):
    got = crash.trial(tmp_path / "home", point, ROUNDS, LABELS_PER_ROUND)
    # The plan is 2 x 20 labels; before the loop was durable a rerun opened round 1 again and bought 20 more.
    assert got["labels_bought"] <= ROUNDS * LABELS_PER_ROUND, got
    assert got["labels_bought"] == got["labels_distinct"] == got["labels_paid"], got  # none paid twice
    assert got["rounds"] == [1, 2] and got["versions"] == sorted(got["round_versions"]) == [1, 2], got
    assert got["champion"] in got["round_versions"], got
    assert [status for _, status in got["loops"]] == ["finished"], got  # continued, not a second loop
    assert got["running_runs"] == 0 and got["failed_runs"] == crash.LEFT_RUNNING[point], got
    assert got["checkpoints_left"] == [], got  # removed once each round's model was registered
    if point == "training":
        # Killed after optimizer step 3, whose checkpoint was not saved yet: round 1 resumed from step 2.
        assert got["round_1_resumed_from_step"] == crash.KILL_STEP - 1, got
    else:
        assert got["round_1_resumed_from_step"] is None, got
    assert all(got["checks"].values()), got["checks"]


def test_fresh_starts_over_and_removes_the_abandoned_loops_checkpoints(tmp_path):
    home = tmp_path / "home"
    crash.killed_run(home, "training", ROUNDS, LABELS_PER_ROUND)
    assert list((home / "checkpoints" / "train").rglob("checkpoint.json")), "the killed run left no checkpoint"
    summary = crash.rerun(home, 1, LABELS_PER_ROUND, "--fresh")
    got = crash.facts(home, summary)
    assert [status for _, status in got["loops"]] == ["abandoned", "finished"], got
    assert got["round_1_resumed_from_step"] is None, got  # trained from scratch in the new loop
    assert got["checkpoints_left"] == [] and got["failed_runs"] == 2, got
    # The abandoned round's 20 labels stay bought; the new loop selects past them and buys its own 20.
    assert got["labels_bought"] == got["labels_paid"] == 2 * LABELS_PER_ROUND, got
