"""Run reporting: a JSONL log, TensorBoard event files (tensorboardX, no TensorFlow), a tqdm bar
and a PNG of the curves at the end."""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Mapping

import numpy as np


def to_python(metrics: Mapping) -> dict[str, float]:
    """Fetches device scalars to Python floats (one host transfer for the whole dict; on several
    processes, `rljax.sharding.to_host`'s)."""
    from rljax.sharding import to_host

    host = to_host(dict(metrics))
    return {k: float(np.asarray(v)) for k, v in host.items()}


class MetricsLogger:
    """Writes each step's scalars to `workdir/metrics.jsonl` and TensorBoard, and shows progress.

    Appends when the JSONL already exists (a resumed run), so the curves of a run that was
    interrupted and resumed stay in one file; entries at or after `start_step` are dropped
    first, so a resumed run does not log the steps after its checkpoint twice. The progress bar
    counts `log` calls out of `total_steps`, from `done_steps` (default `start_step`).

    On several JAX processes only process 0 writes and shows progress; on the others `log` does
    nothing. Every process logs the same values (SPMD), and with a workdir shared between them
    all but one would append duplicate rows to the same file.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, description: str = "train", done_steps: int | None = None):
        import jax

        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = self._tb = self._bar = None
        if jax.process_index() != 0:
            return
        self._truncate_after(start_step)
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step or None)
        if progress:
            from tqdm.auto import tqdm

            initial = start_step if done_steps is None else done_steps
            self._bar = tqdm(total=total_steps, initial=initial, desc=description, dynamic_ncols=True)

    def _truncate_after(self, start_step: int) -> None:
        if not os.path.exists(self.jsonl_path):
            return
        kept = [row for row in read_jsonl(self.jsonl_path) if row.get("step", -1) < start_step]
        with open(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in kept)

    def log(self, step: int, metrics: Mapping[str, float], progress_keys: Iterable[str] = (),
            advance: bool = True) -> None:
        """Records `metrics` at `step`; `advance=False` leaves the progress bar where it is."""
        if self._jsonl is None:  # not process 0
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
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


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(rows: list[dict], path: str, keys: Iterable[str], title: str = "") -> str:
    """One subplot per metric key (x: step) saved as a PNG; keys absent from every row are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        raise ValueError("none of the requested metrics were logged")
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
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
