"""metrics.jsonl: append-only, tagged by stage, a torn last line dropped with a warning, and a
resume that drops rows rewrites the file atomically (temporary file, fsync, rename)."""

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

from rljax.train.metrics import TORN_WRITE_ENV, MetricsLogger, plot_curves, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _log(workdir, stage, steps, start_step=0, **kwargs):
    logger = MetricsLogger(str(workdir), total_steps=len(steps), start_step=start_step, tensorboard=False,
                           progress=False, description=stage, **kwargs)
    for step in steps:
        logger.log(step, {"loss": float(step)})
    logger.close()


def _path(workdir):
    return os.path.join(str(workdir), "metrics.jsonl")


def _steps_and_stages(workdir):
    return [(r["step"], r["stage"]) for r in read_jsonl(_path(workdir))]


def test_rows_carry_their_stage_and_a_resume_drops_only_its_own_stage(tmp_path):
    _log(tmp_path, "sft", range(4))
    _log(tmp_path, "rl", range(4, 8))
    # The SFT stage resumed at step 2 relogs its steps 2 and 3; the RL rows after them stay.
    _log(tmp_path, "sft", [2, 3], start_step=2)
    assert _steps_and_stages(tmp_path) == ([(0, "sft"), (1, "sft")] + [(s, "rl") for s in range(4, 8)]
                                           + [(2, "sft"), (3, "sft")])
    _log(tmp_path, "rl", [6, 7], start_step=6)
    assert sorted(_steps_and_stages(tmp_path)) == [(s, "sft") for s in range(4)] + [(s, "rl") for s in range(4, 8)]
    assert len(read_jsonl(_path(tmp_path))) == 8


def test_stage_defaults_to_the_description_and_can_be_given(tmp_path):
    logger = MetricsLogger(str(tmp_path), total_steps=1, tensorboard=False, progress=False, description="RL stage",
                           stage="rl")
    logger.log(0, {"loss": 1.0})
    logger.close()
    _log(tmp_path, "preference", [1])
    assert _steps_and_stages(tmp_path) == [(0, "rl"), (1, "preference")]


def test_rows_without_a_stage_are_dropped_only_inside_the_given_range(tmp_path):
    # Rows of an older version carry no "stage": they count as the resuming stage's only when
    # it bounds its range with end_step, and only within [start_step, end_step).
    with open(_path(tmp_path), "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 0.0}) + "\n" for s in range(8))
    _log(tmp_path, "sft", [2], start_step=2)
    assert [r["step"] for r in read_jsonl(_path(tmp_path)) if "stage" not in r] == list(range(8))
    _log(tmp_path, "sft", [2, 3], start_step=2, end_step=4)
    rows = read_jsonl(_path(tmp_path))
    assert [r["step"] for r in rows if "stage" not in r] == [0, 1, 4, 5, 6, 7]
    assert [r["step"] for r in rows if r.get("stage") == "sft"] == [2, 3]  # the first resume's row 2 went too


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_run_resumes(tmp_path):
    _log(tmp_path, "sft", range(3))
    with open(_path(tmp_path), "a") as f:
        f.write('{"step": 3, "stage": "sft", "lo')  # a kill in the middle of the write
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: line 4, the last, is an incomplete row"):
        assert [r["step"] for r in read_jsonl(_path(tmp_path))] == [0, 1, 2]
    # Resuming from step 3 drops the torn line (nothing else) and appends after a clean end.
    with pytest.warns(UserWarning, match="line 4"):
        _log(tmp_path, "sft", [3, 4], start_step=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in read_jsonl(_path(tmp_path))] == [0, 1, 2, 3, 4]


def test_a_torn_last_line_with_a_newline_is_dropped_before_appending(tmp_path):
    _log(tmp_path, "rl", range(2))
    with open(_path(tmp_path), "a") as f:
        f.write('{"step": 2, "sta\n')
    with pytest.warns(UserWarning, match="line 3"):
        _log(tmp_path, "rl", [5], start_step=5)  # drops no row of its own: only the torn line
    assert [r["step"] for r in read_jsonl(_path(tmp_path))] == [0, 1, 5]


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path):
    with open(_path(tmp_path), "w") as f:
        f.write(json.dumps({"step": 0, "stage": "sft", "loss": 1.0}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _log(tmp_path, "sft", [1], start_step=1)
    assert [r["step"] for r in read_jsonl(_path(tmp_path))] == [0, 1]


def test_a_malformed_line_before_the_last_is_a_corrupt_file(tmp_path):
    with open(_path(tmp_path), "w") as f:
        f.write('{"step": 0, "stage": "sft"}\n{"step": 1, "sta\n{"step": 2, "stage": "sft"}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2 is not valid JSON .* corrupt file"):
        read_jsonl(_path(tmp_path))
    with pytest.raises(ValueError, match="line 2"):
        MetricsLogger(str(tmp_path), total_steps=1, start_step=1, tensorboard=False, progress=False)


def test_the_file_is_replaced_by_a_rename_only_when_rows_are_dropped(tmp_path):
    _log(tmp_path, "sft", range(4))
    os.chmod(_path(tmp_path), 0o640)
    inode = os.stat(_path(tmp_path)).st_ino
    _log(tmp_path, "sft", [4, 5], start_step=4)  # nothing to drop: appended in place
    assert os.stat(_path(tmp_path)).st_ino == inode
    _log(tmp_path, "sft", [2, 3], start_step=2)  # rows 2..5 dropped: a new file renamed over it
    after = os.stat(_path(tmp_path))
    assert after.st_ino != inode and after.st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left behind
    assert [r["step"] for r in read_jsonl(_path(tmp_path))] == [0, 1, 2, 3]


def test_the_torn_write_hook_kills_the_process_in_the_middle_of_a_line(tmp_path):
    script = (f"from rljax.train.metrics import MetricsLogger\n"
              f"logger = MetricsLogger({str(tmp_path)!r}, total_steps=4, tensorboard=False, progress=False,"
              f" description='rl')\n"
              f"for step in range(4):\n"
              f"    logger.log(step, {{'loss': 0.5}})\n")
    env = dict(os.environ, **{TORN_WRITE_ENV: "2"}, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    text = open(_path(tmp_path)).read()
    assert text.count("\n") == 2 and text.split("\n")[-1].startswith('{"step": 2')
    with pytest.warns(UserWarning, match="line 3"):
        assert [r["step"] for r in read_jsonl(_path(tmp_path))] == [0, 1]


def test_a_bad_torn_write_hook_value_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(TORN_WRITE_ENV, "soon")
    with pytest.raises(ValueError, match=f"{TORN_WRITE_ENV}='soon' is not a step"):
        MetricsLogger(str(tmp_path), total_steps=1, tensorboard=False, progress=False)


def test_plot_curves_ignores_the_stage_label(tmp_path):
    _log(tmp_path, "sft", range(3))
    rows = read_jsonl(_path(tmp_path))
    keys = sorted({k for r in rows for k in r if k != "step"})  # what rljax.train.preference plots
    assert keys == ["loss", "stage"]
    png = plot_curves(rows, str(tmp_path / "curves.png"), keys)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none of the requested"):
        plot_curves(rows, str(tmp_path / "x.png"), ["stage"])
