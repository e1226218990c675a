"""rljax: reinforcement learning for large language models in JAX.

Submodules are imported on first use (`from rljax import models, losses`), so that
`import rljax.losses` in a notebook does not pay for the model or data stacks.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("models", "generate", "losses", "sharding", "data", "rewards", "envs", "train", "estimators")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
