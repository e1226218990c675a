"""One process of the multi-process checks (`tests/multiprocess/check.py`).

Runs a job of `problem.py` on a global data=2 x fsdp=2 x tensor=2 mesh of 8 CPU devices and
writes what the check compares into the directory --out. Launched either as the only process (8
local devices: the reference) or as one of 2 processes with 4 devices each, joined by
`jax.distributed` and talking through the CPU collectives (gloo); the joined processes share
--out. Jobs:

  step        the sharded GRPO learner calls; process 0 writes the gathered params and the
              metrics to step.npz.
  experiment  `experiment.run` of the tiny grpo_arithmetic config with --out/workdir as its
              workdir; every process writes the completions it decoded to texts.<process>.json,
              and process 0 the final RL params to params.npz.

    python -m tests.multiprocess.worker --job JOB --out DIR [--num-processes 2 --process-id I
                                                             --coordinator 127.0.0.1:PORT]

Exit code EXIT_NO_COLLECTIVES (and a line on stderr) when the installed jax has no CPU
collectives, so that the check can tell "cannot run here" from "ran and failed".
"""

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np

EXIT_NO_COLLECTIVES = 3
MESH = (2, 2, 2)  # (data, fsdp, tensor): each axis's collectives cross processes in some layout
INIT_TIMEOUT_S = 120  # a peer that never arrives fails the run instead of hanging it


def step_job(out: Path) -> None:
    from rljax import sharding
    from rljax.train.sharded import shard_train_step
    from tests.multiprocess.problem import grpo_problem, run_steps

    p = grpo_problem()
    mesh = sharding.make_mesh(*MESH)
    sharded = shard_train_step(p.step, mesh, p.state, p.batch, p.param_axes, frozen_axes=p.frozen_axes)
    state, metrics = run_steps(sharded, sharded.place_state(p.state), sharded.place_batch(p.batch), p.key)
    _save_from_process_0(out / "step.npz", {"params": state.params, "metrics": metrics})


def experiment_job(out: Path) -> None:
    from tests.multiprocess.problem import run_experiment

    _, state, texts = run_experiment(dict(zip(("data", "fsdp", "tensor"), MESH)), str(out / "workdir"))
    (out / f"texts.{jax.process_index()}.json").write_text(json.dumps(texts))
    _save_from_process_0(out / "params.npz", state.params)


def _save_from_process_0(path: Path, tree) -> None:
    """`tree` gathered whole (on every process: a collective), saved by process 0 by key path."""
    from rljax.sharding import to_host

    tree = to_host(tree)
    if jax.process_index() == 0:
        named = jax.tree_util.tree_flatten_with_path(tree)[0]
        np.savez(path, **{jax.tree_util.keystr(key): np.asarray(x) for key, x in named})


JOBS = {"step": step_job, "experiment": experiment_job}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", choices=sorted(JOBS), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default=None)
    args = parser.parse_args()

    if "jax_cpu_collectives_implementation" not in jax.config.values:
        print(f"jax {jax.__version__} has no jax_cpu_collectives_implementation option: no "
              "multi-process collectives on CPU", file=sys.stderr)
        sys.exit(EXIT_NO_COLLECTIVES)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if os.environ.get("RLJAX_COMPILE_CACHE"):  # the test suite's persistent cache (tests/conftest.py)
        jax.config.update("jax_compilation_cache_dir", os.environ["RLJAX_COMPILE_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

    # Imported after the configuration, before any computation, as jax.distributed requires.
    from rljax import sharding

    if args.num_processes > 1:
        sharding.initialize_distributed(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                        process_id=args.process_id, initialization_timeout=INIT_TIMEOUT_S)
    assert jax.device_count() == 8, f"expected 8 global devices, got {jax.device_count()}"
    assert jax.process_count() == args.num_processes, (jax.process_count(), args.num_processes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    JOBS[args.job](out)


if __name__ == "__main__":
    main()
