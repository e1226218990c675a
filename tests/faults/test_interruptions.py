"""A run preempted with SIGTERM and later killed with SIGKILL, each at a random step, then
resumed with the same workdir, ends exactly like an uninterrupted run (parameters, optimiser
state and every logged metric but wall-clock times)."""

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
