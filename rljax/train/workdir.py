"""Before a run starts: its input files exist and parse, its workdir can be written, and a workdir
that holds an earlier run is resumed only with the config that made it.

Every problem is one line (`InputError`, `WorkdirError`) naming the path or key and the fix, and
each check runs before anything of the run is built. Nothing here ever deletes a file:

  - `check_inputs(config)`: every file the config names (the model's GGUF or Hugging Face
    directory, a preference JSONL) exists, and a JSONL parses, a bad row named by file and line.
  - `prepare_workdir(config, workdir, on_change)`: the workdir is created (or must be writable),
    and holds `config.json`, the config of the run it holds. Resuming with another config is,
    by `on_change`:
      "stop"      (default) refused, listing the changed keys; the workdir is left as it was;
      "continue"  allowed when only keys that cannot change the results changed (`SAFE_KEYS`:
                  logging, checkpoint cadence, fault limits, the evaluation's cadence); the old
                  config is kept as config.<time>.json;
      "restart"   the whole old run is moved aside to <workdir>.moved-<time>, and a fresh run
                  starts in the workdir.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from rljax.train.config import ExperimentConfig, as_dict

CONFIG_FILE = "config.json"
ON_CHANGE = ("stop", "continue", "restart")
# Keys a resumed run may change without changing what it computes.
SAFE_KEYS = ("log.", "checkpoint.every", "checkpoint.keep", "faults.", "eval.every")
MIN_FREE_BYTES = 64 << 20  # below this a run would die at its first checkpoint


class InputError(ValueError):
    """A file the config names is missing or malformed (one line)."""


class WorkdirError(ValueError):
    """The workdir cannot be used as asked (one line)."""


def check_inputs(config: ExperimentConfig) -> None:
    """Raises `InputError` for the first file the config names that is missing or malformed."""
    from rljax.models.gguf import smollm2_gguf_path

    m = config.model
    if m.source == "gguf" or config.tokenizer.kind == "gguf":
        path = m.path
        if not path:
            try:
                path = smollm2_gguf_path()
            except FileNotFoundError as error:
                raise InputError(f"model.path is empty and the default model is missing: {error}") from None
        if not os.path.isfile(path):
            raise InputError(f"model.path={path}: no such GGUF file")
    if m.source == "hf" and not os.path.isfile(os.path.join(m.path, "config.json")):
        raise InputError(f"model.path={m.path}: not a Hugging Face checkpoint directory (no config.json)")
    pairs = config.preference.pairs if config.preference is not None else None
    if pairs is not None and pairs.source == "jsonl":
        from rljax.data.preference import read_preference_jsonl

        if not os.path.isfile(pairs.path):
            raise InputError(f"preference.pairs.path={pairs.path}: no such file")
        try:
            read_preference_jsonl(pairs.path)
        except ValueError as error:
            raise InputError(f"preference.pairs.path: {error}") from None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {k: v for name, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{name}.").items()}
    return {prefix[:-1]: tree}


def changed_keys(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every dotted key whose value differs."""
    a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
    return [(k, a.get(k, "<unset>"), b.get(k, "<unset>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_KEYS)


def _write_json(path: str, payload: dict) -> None:
    """Writes through a temporary file and an atomic rename, so a kill leaves the old file or the
    new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _fail_unwritable(workdir: str, error: OSError) -> None:
    raise WorkdirError(f"--workdir={workdir}: cannot write there ({error.strerror or error}): choose another "
                       "directory or free space") from None


def prepare_workdir(config: ExperimentConfig, workdir: str, on_change: str = "stop") -> None:
    """Checks (and on the first run creates) `workdir` for `config`; see the module docstring.
    Raises `WorkdirError` naming the path or the changed keys and the fix."""
    if on_change not in ON_CHANGE:
        raise WorkdirError(f"--config_change={on_change!r}: choose one of {', '.join(ON_CHANGE)}")
    current = as_dict(config)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        changes = changed_keys(saved, current)
        if changes and on_change == "stop":
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:8])
            more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
            raise WorkdirError(f"--workdir={workdir} holds a run of another config ({listed}{more}): rerun with "
                               "its config, or --config_change=continue (only log.*, checkpoint.every/keep, "
                               "faults.*, eval.every may change) or --config_change=restart (moves the old run "
                               "aside)")
        if changes and on_change == "continue":
            unsafe = [k for k, _, _ in changes if not _is_safe(k)]
            if unsafe:
                raise WorkdirError(f"--config_change=continue: {', '.join(unsafe[:8])} would change what the run "
                                   f"in {workdir} computes; rerun with --config_change=restart to move it aside")
            os.replace(path, os.path.join(workdir, f"config.{_stamp()}.json"))
        if changes and on_change == "restart":
            aside = f"{os.path.normpath(workdir)}.moved-{_stamp()}"
            os.replace(workdir, aside)
            print(f"moved the run in {workdir} aside to {aside}")
    try:
        os.makedirs(workdir, exist_ok=True)
        if shutil.disk_usage(workdir).free < MIN_FREE_BYTES:
            raise WorkdirError(f"--workdir={workdir}: less than {MIN_FREE_BYTES >> 20} MB free on its disk")
        if not os.path.isfile(path):
            _write_json(path, current)
    except OSError as error:
        _fail_unwritable(workdir, error)
