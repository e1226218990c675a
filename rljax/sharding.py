"""Device meshes, logical-axis rules, and placement of parameters, batches and KV caches.

One SPMD program runs over a 3-axis device mesh:
  data    pure data parallelism: parameters replicated, batch split.
  fsdp    fully sharded data parallelism (ZeRO-3): the batch is split *and* every parameter is
          sharded along its model dimension ('embed'); XLA all-gathers a weight where it is used.
  tensor  Megatron-style tensor parallelism: attention heads, MLP hidden units and the vocabulary
          are split, so each device computes a slice of every layer.

The model names every array dimension logically (`rljax.models.param_axes`, the block-boundary
activation constraints in `rljax.models.transformer`, `rljax.models.cache.CACHE_AXES`); `RULES`
maps those names to mesh axes, the way flax's lm1b example does.

Odd sizes. A dimension is only sharded over mesh axes whose (product of) sizes divide it: when a
concrete sharding is built for a concrete shape (`logical_to_spec` and everything built on it),
mesh axes that do not divide the dimension are dropped, keeping the longest prefix of the rule's
axes that does. So SmolLM2's 9 query / 3 kv heads on tensor=4 leave the head dimension of those
kernels replicated over 'tensor' (they stay sharded over 'fsdp' along 'embed'), and a batch of 2
on data=2, fsdp=2 is split over 'data' only. The dropped axis is not reassigned to another
dimension. Activation constraints inside the model go through flax's shape-blind resolution; XLA
pads a dimension that a constraint splits unevenly, which is correct but wastes a little work.

Typical use:
    sharding.initialize_distributed()                 # first thing; no-op on one host
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    params = sharding.init_sharded(cfg, key, mesh)    # or shard_params(cfg, params, mesh)
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
    with sharding.use_mesh(mesh):                     # the model's activation constraints apply
        logits, _ = models.apply(cfg, params, tokens)
    host_logits = sharding.to_host(logits)            # whole, on every process

Several processes (one per host, `initialize_distributed`) run the same program: `to_host` gives
each of them the whole of an array that spans them all, `any_process` a decision they share, and
`process_0_first` orders the writing of files they read.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from rljax import models
from rljax.models.cache import CACHE_AXES, init_cache
from rljax.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
T = TypeVar("T")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical name -> mesh axes, in flax's format: for each array, every rule in order assigns its
# mesh axes to the dimension with that logical name, unless those mesh axes are already used by
# another dimension of the same array. Names without a rule are replicated.
RULES: Rules = (
    # Parameters: FSDP over the model dimension; tensor parallelism over heads, MLP, vocabulary.
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    # Block-boundary activations and the KV cache: the batch over every data-parallel axis.
    ("batch", ("data", "fsdp")),
    ("act_kv_heads", "tensor"),
    # Replicated. Listed so that the table names every logical axis the model uses.
    ("layers", None),
    ("head_dim", None),
    ("head_out", None),
    ("length", None),
    ("act_embed", None),
    ("cache_length", None),
)


def resolve_mesh_axes(data: int = 1, fsdp: int = 1, tensor: int = 1, n_devices: int | None = None,
                      names: str = "") -> tuple[dict[str, int] | None, list[str]]:
    """(sizes, problems): the sizes of the ('data', 'fsdp', 'tensor') axes of a mesh over
    `n_devices` (default: every device of every process), one -1 resolved to the devices the other
    axes leave, and what is wrong with them. Sizes whose product is not the device count are still
    returned, beside that problem; None when there are no sizes to give (a bad size, two -1s, a
    -1 the devices cannot fill). `names` prefixes the axis names in the messages ("mesh." where
    they come from a config section)."""
    n = jax.device_count() if n_devices is None else n_devices
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    problems = [f"{names}{axis}={size!r}: a mesh axis size is a positive integer, or -1 for the devices "
                "the other axes leave" for axis, size in sizes.items()
                if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1)]
    inferred = [axis for axis, size in sizes.items() if size == -1]
    if len(inferred) > 1:
        problems.append(f"{' and '.join(names + a for a in inferred)} are all -1: at most one mesh axis may be "
                        "-1; give the others sizes")
    if problems:
        return None, problems
    known = math.prod(size for size in sizes.values() if size != -1)
    if inferred and n % known:
        return None, [f"cannot infer {names}{inferred[0]}=-1: {n} devices are not divisible by the product "
                      f"{known} of the other axes"]
    if inferred:
        sizes[inferred[0]] = n // known
    elif known != n:
        problems.append(f"{names}data x {names}fsdp x {names}tensor = {known} needs {known} devices, but there "
                        f"are {n}: make the product {n}, or set one axis to -1 to take the remaining devices")
    return sizes, problems


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: every device of every process).

    One axis may be -1: it takes the devices the others leave. The product of the sizes must
    equal the number of devices; to use a subset, pass it as `devices`. The device order comes
    from `jax.make_mesh`, which follows the physical topology (ICI rings on TPU, hosts on GPU).
    The axes are `AxisType.Auto` (XLA propagates shardings from the inputs and the model's
    constraints), not the Explicit default of `jax.make_mesh`, which would require sharding
    annotations on every operation of the model.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes, problems = resolve_mesh_axes(data, fsdp, tensor, len(devices))
    if problems:
        raise ValueError("; ".join(problems))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def one_device_mesh() -> Mesh:
    """A mesh of this process's first device alone (every axis 1): where a run that asks for no
    mesh computes, whatever devices the host has."""
    return make_mesh(devices=jax.local_devices()[:1])


def _dividing_axes(axes: MeshAxes, size: int, mesh_shape) -> MeshAxes:
    """The longest prefix of `axes` whose mesh sizes multiply to a divisor of `size`."""
    if axes is None:
        return None
    kept, product = [], 1
    for axis in (axes,) if isinstance(axes, str) else axes:
        if size % (product * mesh_shape[axis]):
            break
        kept.append(axis)
        product *= mesh_shape[axis]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else tuple(kept)


def logical_to_spec(logical_spec: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh | AbstractMesh, rules: Rules = RULES) -> PartitionSpec:
    """The mesh `PartitionSpec` of an array of `shape` whose dimensions have logical names.

    `logical_spec` names the leading dimensions (a `PartitionSpec` or tuple of names or None);
    the remaining dimensions are replicated. The spec has one entry per dimension. Mesh axes
    that do not divide their dimension are dropped (see the module docstring), so the result
    is always valid for `shape`.
    """
    logical_spec = tuple(logical_spec)
    if len(logical_spec) > len(shape):
        raise ValueError(f"logical axes {logical_spec} name more dimensions than shape {tuple(shape)}")
    mesh_axes = nn.logical_to_mesh_axes(logical_spec, rules)
    missing = {a for axes in mesh_axes if axes is not None
               for a in ((axes,) if isinstance(axes, str) else axes)} - set(mesh.shape)
    if missing:
        raise ValueError(f"rules map {logical_spec} to mesh axes {sorted(missing)} that the mesh "
                         f"{dict(mesh.shape)} does not have")
    mesh_axes = list(mesh_axes) + [None] * (len(shape) - len(mesh_axes))
    return PartitionSpec(*(_dividing_axes(axes, n, mesh.shape) for axes, n in zip(mesh_axes, shape)))


def logical_to_sharding(logical_spec: Sequence[str | None], shape: Sequence[int],
                        mesh: Mesh | AbstractMesh, rules: Rules = RULES) -> NamedSharding:
    """`logical_to_spec` as a `NamedSharding` on `mesh`."""
    return NamedSharding(mesh, logical_to_spec(logical_spec, shape, mesh, rules))


def _tree_shardings(axes_tree, shapes_tree, mesh, rules: Rules):
    """Maps a pytree of logical specs and the matching pytree of shapes to `NamedSharding`s."""
    return jax.tree.map(
        lambda axes, leaf: logical_to_sharding(axes, leaf.shape, mesh, rules),
        axes_tree,
        shapes_tree,
        is_leaf=lambda x: isinstance(x, (PartitionSpec, tuple)),
    )


def param_shardings(cfg: ModelConfig, mesh: Mesh | AbstractMesh, rules: Rules = RULES) -> dict:
    """A pytree of `NamedSharding`s matching `models.init(cfg, key)`.

    Shapes come from `jax.eval_shape`, so this is cheap for full-size presets and never
    allocates parameters. An `AbstractMesh` gives shardings for planning without devices.
    """
    shapes = jax.eval_shape(functools.partial(models.init, cfg), jax.random.PRNGKey(0))
    return _tree_shardings(models.param_axes(cfg), shapes, mesh, rules)


def shard_params(cfg: ModelConfig, params: dict, mesh: Mesh, rules: Rules = RULES) -> dict:
    """`params` placed on `mesh` by the logical-axis rules (a `jax.device_put` of every leaf).

    On several processes every process must pass the same values (JAX checks this). To create
    parameters too large for one device, use `init_sharded` instead.
    """
    shardings = param_shardings(cfg, mesh, rules)
    if jax.tree.structure(params) != jax.tree.structure(shardings):
        raise ValueError(
            f"params do not have the layout of models.init for this config (scan_layers="
            f"{cfg.scan_layers}); convert with models.stack_layers / models.unstack_layers"
        )
    return jax.device_put(params, shardings)


def init_sharded(cfg: ModelConfig, key: jax.Array, mesh: Mesh, rules: Rules = RULES) -> dict:
    """`models.init(cfg, key)` created directly in its sharded layout.

    `models.init` is compiled with the parameter shardings as `out_shardings`, so each device
    only ever holds its own shards: no full-size parameter is materialised on one device. The
    values equal `models.init(cfg, key)` (JAX's partitionable threefry RNG does not depend on
    the sharding).
    """
    key = jax.device_put(key, NamedSharding(mesh, PartitionSpec()))
    init = jax.jit(functools.partial(models.init, cfg), out_shardings=param_shardings(cfg, mesh, rules))
    return init(key)


def batch_sharding(mesh: Mesh, ndim: int, *, batch_size: int | None = None,
                   rules: Rules = RULES) -> NamedSharding:
    """Sharding of a [B, ...] array of rank `ndim`: B split over the data-parallel axes.

    With `batch_size`, mesh axes that do not divide it are dropped (a batch smaller than the
    data-parallel degree is then partly replicated); without it, B must be divisible by
    data x fsdp when the sharding is used.
    """
    if ndim < 1:
        raise ValueError(f"a batch array has a leading batch dimension; got ndim={ndim}")
    if batch_size is None:
        return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules))
    shape = (batch_size,) + (1,) * (ndim - 1)
    return logical_to_sharding(("batch",), shape, mesh, rules)


def cache_shardings(cfg: ModelConfig, mesh: Mesh, batch_size: int, max_len: int,
                    rules: Rules = RULES) -> dict:
    """`NamedSharding`s matching `models.init_cache(cfg, batch_size, max_len)` (CACHE_AXES)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, batch_size, max_len))
    return _tree_shardings(CACHE_AXES, shapes, mesh, rules)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = RULES) -> Iterator[Mesh]:
    """Context in which the model's `nn.with_logical_constraint`s shard activations on `mesh`.

    Sets `jax.set_mesh(mesh)` (the context mesh that flax's constraints need; the legacy
    `with mesh:` is deprecated in JAX 0.10 and flax does not see it) and `nn.logical_axis_rules`.
    Both are read when a function is traced, and jit's cache keys on the mesh but not on the
    rules: trace a function under the rules you want it compiled with.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


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
