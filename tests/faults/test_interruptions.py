"""A run preempted with SIGTERM and later killed with SIGKILL, each at a step drawn from the
harness's seeded RNG ($RLJAX_FAULT_SEED replays a failure), then resumed with the same workdir,
ends exactly like an uninterrupted run (parameters, optimiser state and every logged metric but
wall-clock times). A kill between two stages, the window a random kill hits only sometimes, and
a kill in the middle of writing a metrics row have tests of their own."""

import signal

from tests.faults import harness


def test_sigterm_then_sigkill_then_resume_equals_uninterrupted(tmp_path):
    harness.run(tmp_path / "reference")
    result = harness.interrupt_and_resume(tmp_path / "reference", tmp_path / "interrupted",
                                          signals=(signal.SIGTERM, signal.SIGKILL))
    replay = f"seed {result['seed']}, kills {result['kills']}"
    (term, term_at, term_code), (kill, kill_at, kill_code) = result["kills"]
    # SIGTERM: a checkpoint, a message, and the conventional exit status (unless the run had
    # already finished, which a 9-row run cannot do before its 8th row).
    assert term_code == 143, (replay, result["stderr"])
    assert "preempted" in result["stderr"] and "--workdir" in result["stderr"], replay
    assert kill_code == -signal.SIGKILL, replay
    assert result["differences"] == [], (replay, result["differences"])


def test_sigkill_before_the_first_rl_checkpoint_logs_nothing_twice(tmp_path):
    # The RL stage logs the SFT policy's evaluation before its first iteration: a run killed
    # before the first RL checkpoint restarts the stage, and must replace that row, not repeat it.
    harness.run(tmp_path / "reference")
    result = harness.interrupt_and_resume(tmp_path / "reference", tmp_path / "interrupted",
                                          signals=(signal.SIGKILL,), at=(harness.RL_STAGE_STARTED,))
    assert result["kills"] == [("SIGKILL", harness.RL_STAGE_STARTED, -signal.SIGKILL)], result["stderr"]
    assert result["differences"] == [], (result["kills"], result["differences"])


def test_sigkill_in_the_middle_of_a_metrics_row_then_resume_equals_uninterrupted(tmp_path):
    # The torn last line is dropped with a warning on resume (not a JSONDecodeError that blocks
    # every later resume), and the row is logged again from the stage's checkpoint.
    harness.run(tmp_path / "reference")
    result = harness.torn_write_and_resume(tmp_path / "reference", tmp_path / "interrupted")
    replay = f"seed {result['seed']}, torn write at step {result['step']}"
    assert result["exit_code"] == -signal.SIGKILL, (replay, result["stderr"])
    assert result["torn_tail"].startswith(f'{{"step": {result["step"]}'), (replay, result["torn_tail"])
    assert "is an incomplete row" in result["resume_stderr"], (replay, result["resume_stderr"])
    assert result["differences"] == [], (replay, result["differences"])
