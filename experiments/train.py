"""Runs an experiment config: `python experiments/train.py --config configs/X.py --workdir DIR`.

Any config key can be overridden: `--config.rl.steps=10`. Rerunning with the same --workdir
resumes from its checkpoints; on SIGTERM the run saves a checkpoint and exits with status 143.
`--config.mesh.data=2 --config.mesh.fsdp=4` runs on a device mesh. On several processes (hosts),
launch the same command on each, with a --workdir they share; JAX's distributed runtime is
initialised from the environment (rljax.sharding.initialize_distributed), and only process 0
writes metrics and results (see the README's training section).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `configs`

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output and checkpoint directory")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO
    import jax

    from rljax import sharding
    from rljax.train import experiment, faults
    from rljax.train.config import ConfigError

    sharding.initialize_distributed()
    cache_dir = os.environ.get("RLJAX_COMPILE_CACHE", os.path.expanduser("~/.cache/rljax/jax"))
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    try:
        results = experiment.run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as error:  # one line per problem, no traceback
        sys.exit(str(error))
    except faults.Preempted as preempted:
        print(preempted, file=sys.stderr)
        sys.exit(faults.PREEMPTED_EXIT_CODE)
    summary = {k: v for k, v in results.items() if k != "config"}
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
