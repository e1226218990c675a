"""Device meshes, logical-axis rules, and placement of parameters, batches and KV caches.

One SPMD program runs over a 3-axis device mesh:
  data    pure data parallelism: parameters replicated, batch split.
  fsdp    fully sharded data parallelism (ZeRO-3): the batch is split *and* every parameter is
          sharded along its model dimension ('embed'); XLA all-gathers a weight where it is used.
  tensor  Megatron-style tensor parallelism: attention heads, MLP hidden units and the vocabulary
          are split, so each device computes a slice of every layer.

Three modules, one job each, all of their public names re-exported here:
  mesh    the mesh, the logical-axis rules (`RULES`) and the shardings they give for named
          dimensions (batches, odd sizes); imports nothing from rljax
  params  model-aware placement: the shardings of the parameters and the KV cache, parameters
          placed (`shard_params`) or created sharded (`init_sharded`), and their generation
          layout (`to_generation_layout`: without the FSDP split, for decoding)
  hosts   several processes (one per host): `initialize_distributed`, `to_host`, `any_process`,
          `process_0_first`

Typical use:
    sharding.initialize_distributed()                 # first thing; no-op on one host
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    params = sharding.init_sharded(cfg, key, mesh)    # or shard_params(cfg, params, mesh)
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
    with sharding.use_mesh(mesh):                     # the model's activation constraints apply
        logits, _ = models.apply(cfg, params, tokens)
    host_logits = sharding.to_host(logits)            # whole, on every process
"""

from rljax.sharding.hosts import any_process, initialize_distributed, place, place_rows, process_0_first, to_host
from rljax.sharding.mesh import (
    GENERATION_RULES,
    MESH_AXES,
    RULES,
    MeshAxes,
    Rules,
    batch_sharding,
    logical_to_sharding,
    logical_to_spec,
    make_mesh,
    on_mesh,
    one_device_mesh,
    resolve_mesh_axes,
    use_mesh,
)
from rljax.sharding.params import (
    cache_shardings,
    generation_dtypes,
    generation_shardings,
    init_sharded,
    lower_to_generation_layout,
    param_shardings,
    shard_params,
    to_generation_layout,
)
