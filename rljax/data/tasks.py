"""Loading a task's split for the RL loop: `load_task(name, split, data_dir=None, **knobs)`.

The first call for a (task, knobs) prepares the dataset with its tfds builder into `data_dir`
(ArrayRecord files; a second or so for 10,000 synthetic problems); later calls only open the
files. Reading goes through `tfds.data_source`, random access without TensorFlow. The file format
is passed explicitly: `tfds.data_source` picks ArrayRecord by itself only when given neither a
`data_dir` nor builder kwargs, and otherwise prepares TFRecord files, whose writer needs
TensorFlow.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from .arithmetic import ArithmeticBuilder
from .builder import SPLITS, VALIDATION, TaskBuilder, TaskConfig
from .code import CodeBuilder
from .countdown import CountdownBuilder
from .gsm8k import Gsm8kBuilder
from .guess_number import GuessNumberBuilder
from .two_operand import TwoOperandBuilder

TASKS: dict[str, type[TaskBuilder]] = {
    "arithmetic": ArithmeticBuilder, "countdown": CountdownBuilder, "gsm8k": Gsm8kBuilder,
    "code": CodeBuilder, "two_operand": TwoOperandBuilder, "guess_number": GuessNumberBuilder}


def default_data_dir() -> str:
    """`$RLJAX_DATA_DIR`, else `~/.cache/rljax/tfds`."""
    return os.environ.get("RLJAX_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "rljax", "tfds")


def _to_python(value: Any) -> Any:
    """tfds' NumPy decoding to plain Python: Text bytes -> str, arrays -> lists, scalars -> int."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class _RandomAccess(Sequence):
    """`len` and `[i]` (negative i and slices too) over `_get(i)` for 0 <= i < len."""

    def _get(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        return self._get(index)


class TaskSource(_RandomAccess):
    """One split of a task, random access: `len(source)`, `source[i]` -> an example dict.

    Examples hold plain Python values: `id`, `question`, `answer` (str) and the task's own fields
    (countdown: `numbers` list[int], `target` int; gsm8k: `rationale` str; code: `tests`,
    `entry_point` str).
    Attributes: task, split, config (the knobs), data_source (the underlying tfds source).
    """

    def __init__(self, task: str, split: str, config: TaskConfig, data_source: Sequence):
        self.task, self.split, self.config, self.data_source = task, split, config, data_source

    def __len__(self) -> int:
        return len(self.data_source)

    def _get(self, index: int) -> dict:
        return {key: _to_python(value) for key, value in self.data_source[index].items()}

    def __repr__(self) -> str:
        return (f"TaskSource(task={self.task!r}, split={self.split!r}, n={len(self)}, "
                f"knobs={self.config.knobs()})")


def load_task(name: str, split: str, data_dir: str | os.PathLike | None = None,
              **knobs: Any) -> TaskSource:
    """Opens split "train" or "test" of task `name` ("arithmetic", "countdown", "gsm8k", "code"),
    preparing it into `data_dir` (default `default_data_dir()`) on first use.

    `knobs` are the task config's fields (`ArithmeticConfig`, `CountdownConfig`, `Gsm8kConfig`,
    `CodeConfig`),
    e.g. `load_task("arithmetic", "train", digits=3, operators="+-", train_size=1000)`; an
    unknown knob raises TypeError listing the known ones.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return open_split(TASKS[name], name, split, data_dir, **knobs)


def open_split(builder_cls: type[TaskBuilder], name: str, split: str,
               data_dir: str | os.PathLike | None = None, **knobs: Any) -> TaskSource:
    """Opens `split` of any `TaskBuilder` for `knobs`, preparing it on first use (`load_task`'s
    machinery, also used by builders outside `TASKS`, e.g. `rljax.data.preference`)."""
    splits = SPLITS + ((VALIDATION,) if builder_cls.HAS_VALIDATION else ())
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; splits are {splits}")
    config = builder_cls.config_for(**knobs)
    source = tfds.data_source(builder_cls.name, split=split,
                              data_dir=os.fspath(data_dir or default_data_dir()),
                              builder_kwargs={"config": config, "file_format": "array_record"},
                              download=True)
    return TaskSource(name, split, config, source)



class Slice(_RandomAccess):
    """Examples start .. stop - 1 of a random-access source, itself random access (no copy)."""

    def __init__(self, source: Sequence, start: int, stop: int):
        if not 0 <= start <= stop <= len(source):
            raise ValueError(f"slice [{start}, {stop}) does not fit a source of {len(source)} examples")
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def _get(self, index: int) -> Any:
        return self.source[self.start + index]

    def __repr__(self) -> str:
        return f"Slice({self.source!r}, {self.start}, {self.stop})"


def hold_out(source: Sequence, size: int) -> tuple[Slice, Slice]:
    """(the first len - size examples, the last `size`): a validation split carved from the end
    of a training split, disjoint from what is trained on. Task splits are prefix-stable (a
    larger train_size extends the training split), so raising train_size by `size` keeps the
    examples trained on exactly as they were."""
    if not 0 <= size < len(source):
        raise ValueError(f"cannot hold out {size} of {len(source)} examples: keep at least one to train on")
    return Slice(source, 0, len(source) - size), Slice(source, len(source) - size, len(source))
