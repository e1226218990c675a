"""Runs an experiment config: `python experiments/train.py --config configs/X.py --workdir DIR`.

Any config key can be overridden: `--config.rl.steps=10` (a Python literal, or the text itself).
Before anything is built, the config, the files it names and the workdir are checked; every
problem is one line on stderr naming the key or path and the fix, and the exit status is 1.
Rerunning with the same --workdir resumes from its checkpoints, with the config the workdir
remembers (`--config_change=continue|restart` to change it: see `rljax.train.workdir`); on
SIGTERM the run saves a checkpoint and exits with status 143. `--config.mesh.data=2
--config.mesh.fsdp=4` runs on a device mesh. On several processes (hosts), launch the same
command on each, with a --workdir they share; JAX's distributed runtime is initialised from the
environment (rljax.sharding.initialize_distributed), and only process 0 writes metrics and results.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `configs`


def parse_args(argv):
    """(flags, overrides): the flags, and the `--config.<key>=<value>` overrides in order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment config file (configs/*.py)")
    parser.add_argument("--workdir", required=True, help="output and checkpoint directory")
    parser.add_argument("--config_change", default="stop", choices=("stop", "continue", "restart"),
                        help="what to do when the workdir holds a run of another config")
    overrides = [arg[len("--config."):] for arg in argv if arg.startswith("--config.")]
    flags = parser.parse_args([arg for arg in argv if not arg.startswith("--config.")])
    return flags, overrides


def main(argv):
    flags, overrides = parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
    import jax

    from rljax import sharding
    from rljax.train import experiment, faults
    from rljax.train.checkpoint import CheckpointMismatchError
    from rljax.train.config import ConfigError, apply_overrides, load_config_file
    from rljax.train.preflight import HBMError
    from rljax.train.workdir import InputError, WorkdirError

    sharding.initialize_distributed()
    cache_dir = os.environ.get("RLJAX_COMPILE_CACHE", os.path.expanduser("~/.cache/rljax/jax"))
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    try:
        config = apply_overrides(load_config_file(flags.config), overrides)
        results = experiment.run(config, flags.workdir, on_config_change=flags.config_change)
    except (ConfigError, InputError, WorkdirError, CheckpointMismatchError, HBMError) as error:  # one line each
        sys.exit(str(error))
    except faults.Preempted as preempted:
        print(preempted, file=sys.stderr)
        sys.exit(faults.PREEMPTED_EXIT_CODE)
    summary = {k: v for k, v in results.items() if k != "config"}
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
