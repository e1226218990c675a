"""Run reporting: a JSONL log, TensorBoard event files (tensorboardX, no TensorFlow), a tqdm bar
and a PNG of the curves at the end.

`metrics.jsonl` is append-only while a run goes: one JSON object per line, each tagged with the
stage that wrote it. A kill can only tear its last line; that line is dropped (with a warning)
when the file is read, so a killed run can always resume. The file is rewritten only on a resume
that must drop rows, and then atomically (a temporary file, fsync'd, renamed over it), so a kill
during the rewrite leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import warnings
from typing import Iterable, Mapping

import numpy as np

# Fault injection for tests (tests/faults/): a step number. See `MetricsLogger`.
TORN_WRITE_ENV = "RLJAX_FAULT_TORN_WRITE"


def to_python(metrics: Mapping) -> dict[str, float]:
    """Fetches device scalars to Python floats (one host transfer for the whole dict; on several
    processes, `rljax.sharding.to_host`'s)."""
    from rljax.sharding import to_host

    host = to_host(dict(metrics))
    return {k: float(np.asarray(v)) for k, v in host.items()}


class MetricsLogger:
    """Writes each step's scalars to `workdir/metrics.jsonl` and TensorBoard, and shows progress.

    Each row is `{"step": step, "stage": stage, **metrics}`; `stage` (default: `description`)
    names the stage that logged it ("sft", "rl", ...), so that the stages of one run share one
    file. The progress bar counts `log` calls out of `total_steps`, from `done_steps` (default
    `start_step`).

    Resuming: the file is appended to, after dropping the rows this stage will log again, i.e.
    its own rows at steps >= `start_step`. Rows of other stages are never dropped. Rows without
    a "stage" (written before rows were tagged) are dropped only when the caller bounds its
    range with `end_step` and `start_step <= step < end_step`; without `end_step` they are
    kept, since nothing tells whose they are. A torn last line (see `read_jsonl`) is dropped
    too. When rows must go (or the last row lacks its newline) the file is replaced atomically;
    otherwise it is not rewritten, only appended to.

    On several JAX processes only process 0 writes and shows progress; on the others `log` does
    nothing. Every process logs the same values (SPMD), and with a workdir shared between them
    all but one would append duplicate rows to the same file.

    Fault-injection hook, for tests only: with the environment variable `RLJAX_FAULT_TORN_WRITE`
    set to a step, logging that step writes the first half of its line, flushes it and kills
    the process with SIGKILL, as a kill in the middle of a write would leave the file.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, description: str = "train", done_steps: int | None = None,
                 stage: str | None = None, end_step: int | None = None):
        import jax

        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.stage = description if stage is None else stage
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = self._tb = self._bar = None
        if jax.process_index() != 0:
            return
        self._torn_write_step = _torn_write_step()
        self._drop_rows_to_relog(start_step, end_step)
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step or None)
        if progress:
            from tqdm.auto import tqdm

            initial = start_step if done_steps is None else done_steps
            self._bar = tqdm(total=total_steps, initial=initial, desc=description, dynamic_ncols=True)

    def _relogged(self, row: dict, start_step: int, end_step: int | None) -> bool:
        """Whether this stage, resuming at `start_step`, logs `row`'s step again."""
        step = row.get("step", -1)
        if "stage" in row:
            return row["stage"] == self.stage and step >= start_step
        return end_step is not None and start_step <= step < end_step

    def _drop_rows_to_relog(self, start_step: int, end_step: int | None) -> None:
        if not os.path.exists(self.jsonl_path):
            return
        rows, torn_line, clean_end = _parse_jsonl(self.jsonl_path)
        if torn_line is not None:
            _warn_torn(self.jsonl_path, torn_line)
        kept = [row for row in rows if not self._relogged(row, start_step, end_step)]
        if len(kept) < len(rows) or torn_line is not None or not clean_end:
            _replace_atomically(self.jsonl_path, kept)

    def log(self, step: int, metrics: Mapping[str, float], progress_keys: Iterable[str] = (),
            advance: bool = True) -> None:
        """Records `metrics` at `step`; `advance=False` leaves the progress bar where it is."""
        if self._jsonl is None:  # not process 0
            return
        row = {"step": int(step), "stage": self.stage, **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(row) + "\n"
        if step == self._torn_write_step:
            self._jsonl.write(line[:len(line) // 2])
            self._jsonl.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self._jsonl.write(line)
        if self._tb is not None:
            for name, value in metrics.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, step)
        if self._bar is not None:
            self._bar.update(int(advance))
            shown = {k: f"{metrics[k]:.3g}" for k in progress_keys if k in metrics}
            self._bar.set_postfix(shown, refresh=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def _torn_write_step() -> int | None:
    value = os.environ.get(TORN_WRITE_ENV, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{TORN_WRITE_ENV}={value!r} is not a step number; unset it or give an int") from None


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file. A last line that is not valid JSON is a write cut short by a
    kill: it is dropped with a warning. An invalid line before the last one is corruption, not
    an interrupted append, and raises ValueError naming the file and line."""
    rows, torn_line, _ = _parse_jsonl(path)
    if torn_line is not None:
        _warn_torn(path, torn_line)
    return rows


def _parse_jsonl(path: str) -> tuple[list[dict], int | None, bool]:
    """(rows, the 1-based number of a torn last line or None, whether the file ends with a
    complete line: empty, or a newline last)."""
    with open(path) as f:
        text = f.read()
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    rows, torn_line = [], None
    for i, (n, line) in enumerate(numbered):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if i + 1 < len(numbered):
                raise ValueError(f"{path}: line {n} is not valid JSON ({error.msg}) and is not the last line, "
                                 f"so it is not a torn write but a corrupt file; fix or delete that line") from None
            torn_line = n
    clean_end = not text or text.endswith("\n")
    return rows, torn_line, clean_end


def _warn_torn(path: str, line: int) -> None:
    warnings.warn(f"{path}: line {line}, the last, is an incomplete row (a write cut short by a kill); "
                  f"dropped", stacklevel=3)


def _replace_atomically(path: str, rows: list[dict]) -> None:
    """Writes `rows` to a temporary file next to `path`, fsyncs it and renames it onto `path`
    (with `path`'s permissions), so that readers and a kill see the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_curves(rows: list[dict], path: str, keys: Iterable[str], title: str = "") -> str:
    """One subplot per metric key (x: step) saved as a PNG; keys with no numeric value in any row
    (absent, or a label such as "stage") are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(_numeric(r.get(k)) for r in rows)]
    if not keys:
        raise ValueError("none of the requested metrics were logged")
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in rows if _numeric(r.get(key))]
        ax.plot(*zip(*points), marker="." if len(points) < 40 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
