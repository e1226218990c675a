"""Several processes (one per host) running one SPMD program: joining the multi-process runtime
(`initialize_distributed`), and what every process runs in step on values each sees only in part.

`to_host` gives each process the whole of an array that spans them all, `place` and
`place_rows` build global arrays from the host values every process holds, `any_process` is a
decision they share, and `process_0_first` orders the writing of files they read. On one
process each is its plain single-process counterpart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rljax.sharding.mesh import RULES, Rules, batch_sharding

T = TypeVar("T")

# Environment variables that give the number of processes a launcher started. Slurm's
# SLURM_NTASKS is not among them: sbatch sets it in the batch script, which is one process.
_PROCESS_COUNT_VARS = (
    "JAX_NUM_PROCESSES",  # explicit, with JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID
    "SLURM_STEP_NUM_TASKS",  # srun
    "OMPI_COMM_WORLD_SIZE",  # Open MPI mpirun
)
# Comma-separated worker lists of a multi-host Cloud TPU slice on GKE.
_TPU_WORKER_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
# Keyword arguments of jax.distributed.initialize that ask for a multi-process run.
_EXPLICIT_KWARGS = ("coordinator_address", "num_processes", "cluster_detection_method")


def _launched_as_several_processes() -> bool:
    """Whether a launcher's environment variables say this is one of several processes."""
    for var in _PROCESS_COUNT_VARS:
        if os.environ.get(var):
            return int(os.environ[var]) > 1
    for var in _TPU_WORKER_VARS:
        if os.environ.get(var):
            return len(os.environ[var].split(",")) > 1
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize_distributed(**kwargs) -> bool:
    """Joins the multi-process JAX runtime when this process is one of several; returns whether
    it is (afterwards `jax.devices()` lists the devices of every process).

    Calls `jax.distributed.initialize(**kwargs)` when the environment shows a multi-process
    launch (JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID, srun with several
    tasks, Open MPI's mpirun, a multi-host Cloud TPU slice on GKE), or when `kwargs` ask for one
    (`coordinator_address`, `num_processes` > 1 or `cluster_detection_method`, e.g. "gcetpu" on
    a multi-host TPU VM slice, whose worker list is in the metadata server, not the environment).
    JAX auto-detects the coordinator and process id on Slurm, Open MPI and TPU.
    Idempotent, and a no-op on a single process. Must run before any other JAX call.
    """
    if jax.distributed.is_initialized():
        return True
    requested = {k: kwargs[k] for k in _EXPLICIT_KWARGS if kwargs.get(k) is not None}
    if requested.get("num_processes") == 1:
        return False
    if not requested and not _launched_as_several_processes():
        return False
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs.setdefault("num_processes", int(os.environ["JAX_NUM_PROCESSES"]))
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs.setdefault("process_id", int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    return True


# -- several processes: what every process runs in step, on values each sees only in part --------
def to_host(tree):
    """`tree`'s arrays as NumPy values that every process holds whole: the host copy that decoding,
    reward scoring and metrics read.

    On one process `jax.device_get`. On several, an array that spans other processes' devices
    (a batch split over data x fsdp, sharded params) is gathered from all of them
    (`multihost_utils.process_allgather`); any other value is this process's own. The gather is
    a collective: every process must call `to_host` on the same arrays in the same order, as
    SPMD code does.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (a collective on several), so that all of them take
    the same branch: stop, or fall back to an older checkpoint, together."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


def process_0_first(name: str, fn: Callable[[], T]) -> T:
    """`fn()` on process 0, then on the others once it has returned: for work that writes files
    other processes read when they share a filesystem (a tokenizer trained into the workdir, a
    dataset prepared into the data dir), which would otherwise be written by all at once, or read
    half-written. `name` labels the barrier. On one process, `fn()`."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(name)
    return result if jax.process_index() == 0 else fn()


def place(tree: Any, shardings: Any) -> Any:
    """`tree` (host arrays, arrays on this process's devices, or global arrays that already span
    the mesh, all with their global shapes) placed on `shardings`.

    On one process this is `jax.device_put`. On several, a global array (one that spans other
    processes' devices: sharded params, a generated batch) is resharded on the devices
    (`jax.device_put`), since no process can read it whole. From any other value each process
    builds its part of the global array from its own copy (`jax.make_array_from_callback`): only
    the shards of its own devices are transferred, and no cross-process check of the values runs,
    so every process must pass the same values. There, keys must be raw uint32 key data
    (`jax.random.PRNGKey`, as rljax's loops make them), not typed `jax.random.key` arrays.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, s):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, s)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def place_rows(x: Any, mesh: Mesh, rules: Rules = RULES) -> jax.Array:
    """A [B, ...] array (host values, the same on every process) on `mesh`, B split over the
    data-parallel axes that divide it; on a one-device mesh `jnp.asarray(x)`, as before meshes."""
    if mesh.size == 1:
        return jnp.asarray(x)
    return place(x, batch_sharding(mesh, np.ndim(x), batch_size=np.shape(x)[0], rules=rules))
