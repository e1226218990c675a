"""The ('data', 'fsdp', 'tensor') device mesh, the logical-axis rules, and the shardings they give.

The model names every array dimension logically (`rljax.models.param_axes`, the block-boundary
activation constraints in `rljax.models.transformer`, `rljax.models.cache.CACHE_AXES`); `RULES`
maps those names to mesh axes, the way flax's lm1b example does. This module knows the names
only, not the model, and imports nothing from rljax: any layer may build meshes and shardings.

Odd sizes. A dimension is only sharded over mesh axes whose (product of) sizes divide it: when a
concrete sharding is built for a concrete shape (`logical_to_spec` and everything built on it),
mesh axes that do not divide the dimension are dropped, keeping the longest prefix of the rule's
axes that does. So SmolLM2's 9 query / 3 kv heads on tensor=4 leave the head dimension of those
kernels replicated over 'tensor' (they stay sharded over 'fsdp' along 'embed'), and a batch of 2
on data=2, fsdp=2 is split over 'data' only. The dropped axis is not reassigned to another
dimension. Activation constraints inside the model go through flax's shape-blind resolution; XLA
pads a dimension that a constraint splits unevenly, which is correct but wastes a little work.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical name -> mesh axes, in flax's format: for each array, every rule in order assigns its
# mesh axes to the dimension with that logical name, unless those mesh axes are already used by
# another dimension of the same array. Names without a rule are replicated.
RULES: Rules = (
    # Parameters: tensor parallelism over heads, MLP and vocabulary; FSDP over the model dimension,
    # except for the embedding and LM head [V, D], which FSDP splits along the vocabulary (first
    # rule): split along D, every device would gather the whole matrix for the head and hold a
    # float32 [V, D] gradient accumulator (`rljax.models.head`), whatever the device count.
    ("vocab", ("tensor", "fsdp")),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    # Block-boundary activations and the KV cache: the batch over every data-parallel axis; where
    # fsdp already splits the vocabulary (the fused head's logits [rows, V]), over 'data' alone.
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("act_kv_heads", "tensor"),
    # Replicated. Listed so that the table names every logical axis the model uses.
    ("layers", None),
    ("head_dim", None),
    ("head_out", None),
    ("length", None),
    ("act_embed", None),
    ("cache_length", None),
)


# The generation layout (`rljax.sharding.to_generation_layout`): the parameters without their FSDP
# split, so that a decoding step reads only local weights, with no all-gather per token (under
# FSDP every generated token would gather every weight again). Tensor parallelism stays; the
# batch (activations, KV cache) is split as in `RULES`.
GENERATION_RULES: Rules = (("vocab", "tensor"), ("embed", None)) + tuple(
    rule for rule in RULES if rule[0] not in ("vocab", "embed"))


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


@contextlib.contextmanager
def on_mesh(mesh: Mesh, rules: Rules = RULES):
    """`sharding.use_mesh(mesh)`, the context in which to trace model functions for `mesh`; on a
    one-device mesh no context, so those functions compile as they did before meshes. Also a
    decorator: `on_mesh(mesh)(jax.jit(f))` traces and runs f in the context."""
    if mesh.size == 1:
        yield mesh
    else:
        with use_mesh(mesh, rules):
            yield mesh
