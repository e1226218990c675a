"""A run preempted with SIGTERM and later killed with SIGKILL, each at a random step, then
resumed with the same workdir, ends exactly like an uninterrupted run (parameters, optimiser
state and every logged metric but wall-clock times). A kill between two stages, the window a
random kill hits only sometimes, has a test of its own."""

import signal

from tests.faults import harness


def test_sigterm_then_sigkill_then_resume_equals_uninterrupted(tmp_path):
    harness.run(tmp_path / "reference")
    result = harness.interrupt_and_resume(tmp_path / "reference", tmp_path / "interrupted",
                                          signals=(signal.SIGTERM, signal.SIGKILL))
    (term, term_at, term_code), (kill, kill_at, kill_code) = result["kills"]
    # SIGTERM: a checkpoint, a message, and the conventional exit status (unless the run had
    # already finished, which a 9-row run cannot do before its 8th row).
    assert term_code == 143, result["stderr"]
    assert "preempted" in result["stderr"] and "--workdir" in result["stderr"]
    assert kill_code == -signal.SIGKILL
    assert result["differences"] == [], (result["kills"], result["differences"])


def test_sigkill_before_the_first_rl_checkpoint_logs_nothing_twice(tmp_path):
    # The RL stage logs the SFT policy's evaluation before its first iteration: a run killed
    # before the first RL checkpoint restarts the stage, and must replace that row, not repeat it.
    harness.run(tmp_path / "reference")
    result = harness.interrupt_and_resume(tmp_path / "reference", tmp_path / "interrupted",
                                          signals=(signal.SIGKILL,), at=(harness.RL_STAGE_STARTED,))
    assert result["kills"] == [("SIGKILL", harness.RL_STAGE_STARTED, -signal.SIGKILL)], result["stderr"]
    assert result["differences"] == [], (result["kills"], result["differences"])
