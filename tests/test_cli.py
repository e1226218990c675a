"""`experiments/train.py` on bad input, as a new user meets it: each class of mistake exits with
status 1 and one line on stderr naming the key or path and the fix, without a traceback, and
nothing of the workdir is removed or renamed. A workdir remembers its config: resuming with
another one is refused, continued for safe keys, or restarted after moving the old run aside."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.faults import harness

ROOT = Path(__file__).resolve().parents[1]
# The harness's tiny main job, shortened to one SFT step and one RL iteration.
SHORT = ["--config.sft.steps=1", "--config.rl.steps=1"]


def cli(workdir, *args, config=harness.CONFIG) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), f"--config={config}", f"--workdir={workdir}",
           *harness.TINY, *SHORT, *args]
    return subprocess.run(cmd, env=harness._environment(), capture_output=True, text=True, timeout=harness.TIMEOUT_S)


def listing(workdir: Path) -> dict[str, tuple[int, int]]:
    """Every file under workdir with its size and mtime: what must not change."""
    return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(workdir.rglob("*")) if p.is_file()}


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    text = "\n".join(lines)
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run, to resume."""
    workdir = tmp_path_factory.mktemp("finished")
    proc = cli(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_a_misspelt_key_names_the_closest_key_and_nothing_is_created(tmp_path):
    proc = cli(tmp_path / "run", "--config.rl.learning_rat=1e-3", "--config.evall.every=3")
    assert_one_line_error(proc, "rl.learning_rat: unknown key (did you mean rl.optim.learning_rate?)",
                          "evall: unknown key (did you mean eval?)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("--config.rl.prompts_per_step=-3", "rl.prompts_per_step=-3: must be >= 1"),
    ("--config.eval.batch_size=0", "eval.batch_size=0: must be >= 1"),
    ("--config.rl.minibatches=0", "rl.minibatches=0: must be >= 1"),
    ("--config.rl.optim.learning_rate=-0.001", "rl.optim.learning_rate=-0.001: must be > 0"),
    ("--config.rl.steps=ten", "rl.steps='ten' is a str, expected int"),
])
def test_out_of_range_values_are_one_line_each_before_anything_runs(tmp_path, override, message):
    proc = cli(tmp_path / "run", override)
    assert_one_line_error(proc, message)
    assert len([line for line in proc.stderr.splitlines() if line.startswith("  ")]) == 1  # just that problem
    assert not (tmp_path / "run").exists()


def test_a_missing_or_malformed_data_file_is_named_before_any_work(tmp_path):
    config = ROOT / "configs" / "dpo_arithmetic.py"
    pairs = ["--config.preference.pairs.source=jsonl"]
    proc = cli(tmp_path / "run", *pairs, f"--config.preference.pairs.path={tmp_path / 'nope.jsonl'}", config=config)
    assert_one_line_error(proc, f"preference.pairs.path={tmp_path / 'nope.jsonl'}: no such file")
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n{not json\n")
    proc = cli(tmp_path / "run", *pairs, f"--config.preference.pairs.path={bad}", config=config)
    assert_one_line_error(proc, f"{bad} line 2")
    assert not (tmp_path / "run").exists()


def test_an_unwritable_workdir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = cli(blocker / "run")
    assert_one_line_error(proc, f"--workdir={blocker / 'run'}: cannot write there")


def test_a_changed_config_is_refused_and_the_workdir_is_untouched(finished):
    before = listing(finished)
    proc = cli(finished, "--config.model.overrides.d_model=48")
    assert_one_line_error(proc, "holds a run of another config", "model.overrides.d_model: 32 -> 48",
                          "--config_change=restart")
    assert listing(finished) == before  # no checkpoint renamed, no metrics row removed


def test_continue_allows_only_keys_that_cannot_change_the_results(finished):
    proc = cli(finished, "--config.model.overrides.d_model=48", "--config_change=continue")
    assert_one_line_error(proc, "--config_change=continue: model.overrides.d_model would change what the run")
    rows = (finished / "metrics.jsonl").read_text()
    proc = cli(finished, "--config.eval.every=5", "--config_change=continue")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (finished / "metrics.jsonl").read_text() == rows  # a finished run: nothing rerun, nothing lost
    assert json.loads((finished / "config.json").read_text())["eval"]["every"] == 5
    assert len(list(finished.glob("config.*.json"))) == 1  # the old config is kept beside it


def test_restart_moves_the_old_run_aside_and_starts_fresh(tmp_path):
    workdir = tmp_path / "run"
    assert cli(workdir).returncode == 0
    before = listing(workdir)
    proc = cli(workdir, "--config.model.overrides.d_model=48", "--config_change=restart")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [aside] = tmp_path.glob("run.moved-*")
    assert listing(aside) == before  # the whole old run, as it was
    assert json.loads((workdir / "config.json").read_text())["model"]["overrides"]["d_model"] == 48


def test_a_checkpoint_of_other_shapes_is_refused_not_set_aside(finished, tmp_path):
    """A workdir without config.json (written before it existed) and checkpoints of another
    model: the restore names the mismatch and renames nothing."""
    import shutil

    workdir = tmp_path / "old"
    shutil.copytree(finished, workdir)
    (workdir / "config.json").unlink()
    before = listing(workdir)
    proc = cli(workdir, "--config.model.overrides.d_model=48")
    assert_one_line_error(proc, "written by a different config", "saved (", "expected (")
    assert {k: v for k, v in listing(workdir).items() if k != "config.json"} == before
    assert not list(workdir.rglob("*.corrupt*"))


def test_a_full_disk_is_named(tmp_path, monkeypatch):
    from rljax.train import workdir as workdir_lib
    from rljax.train.config import ExperimentConfig

    monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1 << 20))
    with pytest.raises(workdir_lib.WorkdirError, match=r"less than 64 MB free"):
        workdir_lib.prepare_workdir(ExperimentConfig(), str(tmp_path / "run"))
