"""rljax.sharding on one device: meshes, the rules (on abstract meshes of any size), placement
as a numerical no-op, the activation-constraint context and multi-process detection.

The sharded model on 8 devices is tested in tests/multidevice (run by tests/test_multidevice.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from rljax import models, sharding
from rljax.models.cache import CACHE_AXES
from rljax.models.transformer import ACT_AXES
from rljax.sharding import hosts


def _abstract_mesh(data, fsdp, tensor):
    return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES)


def test_make_mesh_axes_and_inference():
    n = jax.device_count()
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh(fsdp=-1).shape) == {"data": 1, "fsdp": n, "tensor": 1}
    assert dict(sharding.make_mesh(devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=2, fsdp=2, tensor=2), "= 8 needs 8 devices, but there are 1"),
    (dict(data=-1, tensor=-1), "at most one mesh axis may be -1"),
    (dict(data=-1, tensor=2), "cannot infer data=-1"),
    (dict(fsdp=0), "fsdp=0: a mesh axis size is a positive integer, or -1"),
    (dict(tensor=1.5), "tensor=1.5: a mesh axis size is a positive integer, or -1"),
])
def test_make_mesh_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(**kwargs, devices=jax.devices()[:1])


@pytest.mark.parametrize("logical, shape, expected", [
    (("batch",), (8, 5), P(("data", "fsdp"), None)),
    (("batch",), (2,), P("data")),  # fsdp would split 2 rows 4 ways: dropped
    (("batch",), (6,), P("data")),
    (("batch",), (3,), P(None)),
    (("embed", "q_heads", "head_dim"), (64, 8, 16), P("fsdp", "tensor", None)),
    (("embed", "kv_heads", "head_dim"), (64, 2, 16), P("fsdp", None, None)),  # 2 kv heads, tensor=4
    (("embed", "q_heads", "head_dim"), (576, 9, 64), P("fsdp", None, None)),  # SmolLM2's 9 heads
    (("vocab", "embed"), (49152, 576), P(("tensor", "fsdp"), None)),  # the vocabulary over both
    (("embed", "vocab"), (576, 49152), P(None, ("tensor", "fsdp"))),  # the untied head's kernel
    (("vocab", "embed"), (49156, 576), P("tensor", None)),  # 49156 rows: fsdp would not divide them
    (("layers", "embed", "mlp"), (3, 64, 128), P(None, "fsdp", "tensor")),
    (CACHE_AXES["k"], (8, 2, 32, 16), P(("data", "fsdp"), None, None, None)),
    ((), (), P()),
])
def test_logical_to_spec_drops_non_dividing_axes(logical, shape, expected):
    assert sharding.logical_to_spec(logical, shape, _abstract_mesh(2, 2, 4)) == expected


def test_logical_to_spec_errors():
    mesh = _abstract_mesh(2, 2, 2)
    with pytest.raises(ValueError, match="more dimensions than shape"):
        sharding.logical_to_spec(("batch", "length"), (4,), mesh)
    with pytest.raises(ValueError, match="does not have"):
        sharding.logical_to_spec(("batch",), (4,), mesh, rules=(("batch", "model"),))


def test_rules_name_every_logical_axis_of_the_model():
    cfg = models.get_config("tiny", qkv_bias=True, qk_norm=True, value_head=True,
                            tie_embeddings=False, scan_layers=True)
    names = {name for spec in jax.tree.leaves(models.param_axes(cfg),
                                              is_leaf=lambda x: isinstance(x, P))
             for name in spec}
    names |= set(ACT_AXES) | {name for axes in CACHE_AXES.values() for name in axes}
    assert names - {None} <= {name for name, _ in sharding.RULES}


@pytest.mark.parametrize("preset", sorted(models.PRESETS))
def test_full_size_presets_shard_evenly_and_widely(preset):
    """Every preset on a (2, 4, 4) mesh, shapes from eval_shape: every shard is even (shard_shape
    raises otherwise) and a device holds at most 1/8 of the parameters (1/16 is the ideal on
    fsdp x tensor = 16; odd head counts such as SmolLM2's 9 leave attention unsplit by tensor)."""
    cfg = models.get_config(preset, scan_layers=True)
    shapes = jax.eval_shape(lambda k: models.init(cfg, k), jax.random.PRNGKey(0))
    shardings = sharding.param_shardings(cfg, _abstract_mesh(2, 4, 4))
    pairs = list(zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings), strict=True))
    per_device = sum(np.prod(s.shard_shape(leaf.shape)) for leaf, s in pairs)
    assert per_device <= models.count_params(shapes) / 8


def test_the_generation_layout_is_the_training_layout_without_fsdp(key):
    """`generation_shardings` (read off the leaves' own shardings) gives what GENERATION_RULES
    give the model: tensor parallelism kept, nothing split over fsdp; matrices in the compute
    dtype, norm scales in the parameters' dtype."""
    cfg = models.get_config("tiny", tie_embeddings=False, qkv_bias=True, dtype="bfloat16", scan_layers=True)
    mesh = _abstract_mesh(2, 2, 2)
    shapes = jax.eval_shape(lambda k: models.init(cfg, k), key)
    training = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            sharding.param_shardings(cfg, mesh))
    generation = sharding.generation_shardings(training, mesh)
    assert generation == sharding.param_shardings(cfg, mesh, sharding.GENERATION_RULES)
    assert generation["lm_head"]["kernel"].spec == P(None, "tensor")
    assert all("fsdp" not in str(s.spec) for s in jax.tree.leaves(generation))
    dtypes = sharding.generation_dtypes(cfg, shapes)
    assert dtypes["layers"]["mlp"]["up"]["kernel"] == jnp.bfloat16 == dtypes["layers"]["attn"]["q"]["bias"]
    assert dtypes["final_norm"]["scale"] == jnp.float32


def test_shard_params_on_one_device_is_a_numerical_no_op(key):
    cfg = models.get_config("tiny")
    params = models.init(cfg, key)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    placed = sharding.shard_params(cfg, params, mesh)
    assert jax.tree.structure(placed) == jax.tree.structure(params)
    for x, y in zip(jax.tree.leaves(placed), jax.tree.leaves(params), strict=True):
        assert isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        np.testing.assert_array_equal(x, y)
    assert placed["layers_0"]["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor", None)

    tokens = jax.random.randint(key, (2, 5), 0, cfg.vocab_size)
    expected, _ = models.apply(cfg, params, tokens)
    with sharding.use_mesh(mesh):
        logits, _ = models.apply(cfg, placed, jax.device_put(tokens, sharding.batch_sharding(mesh, 2)))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)


def test_shard_params_rejects_the_other_layer_layout(key):
    cfg = models.get_config("tiny")
    stacked = models.stack_layers(models.init(cfg, key), cfg.n_layers)
    with pytest.raises(ValueError, match="stack_layers"):
        sharding.shard_params(cfg, stacked, sharding.make_mesh(devices=jax.devices()[:1]))


def test_init_sharded_equals_init(key):
    cfg = models.get_config("tiny")
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    params = sharding.init_sharded(cfg, key, mesh)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(models.init(cfg, key)), strict=True):
        assert isinstance(x.sharding, NamedSharding)
        np.testing.assert_array_equal(x, y)


def test_batch_and_cache_shardings():
    mesh = _abstract_mesh(2, 2, 2)
    assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
    assert sharding.batch_sharding(mesh, 2, batch_size=2).spec == P("data", None)
    with pytest.raises(ValueError, match="ndim"):
        sharding.batch_sharding(mesh, 0)

    cfg = models.get_config("tiny")
    shardings = sharding.cache_shardings(cfg, mesh, batch_size=4, max_len=16)
    cache = jax.eval_shape(lambda: models.init_cache(cfg, 4, 16))
    assert jax.tree.structure(shardings) == jax.tree.structure(cache)
    assert len(shardings["k"]) == cfg.n_layers
    assert all(s.spec == P(("data", "fsdp"), "tensor", None, None) for s in shardings["k"] + shardings["v"])
    assert shardings["positions"].spec == P(("data", "fsdp"), None)
    assert shardings["index"].spec == P()


def test_use_mesh_makes_the_model_constrain_activations(key):
    """Outside the context the model has no sharding constraints; inside it has one per block
    boundary and the embedding table, and the rules are restored on exit."""
    cfg = models.get_config("tiny")
    params = models.init(cfg, key)
    tokens = jnp.zeros((1, 3), jnp.int32)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])

    def constraints():
        return models.forward.lower(cfg, params, tokens).as_text().count("sharding_constraint")

    assert constraints() == 0
    with sharding.use_mesh(mesh) as active:
        assert active is mesh
        assert nn.get_logical_axis_rules() == sharding.RULES
        assert constraints() == cfg.n_layers + 2  # embedding table, embeddings, each block
    assert nn.get_logical_axis_rules() == ()
    assert jax.sharding.get_abstract_mesh().empty


_LAUNCH_VARS = hosts._PROCESS_COUNT_VARS + hosts._TPU_WORKER_VARS + (
    "JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID")


@pytest.fixture
def distributed(monkeypatch):
    """A clean launch environment and a fake jax.distributed.initialize recording its calls."""
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
    return monkeypatch, calls


@pytest.mark.parametrize("env, kwargs, expected_call", [
    ({}, {}, None),
    ({"SLURM_STEP_NUM_TASKS": "1"}, {}, None),
    ({"SLURM_STEP_NUM_TASKS": "4"}, {}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}, {}),
    ({"TPU_WORKER_HOSTNAMES": "host-0,host-1"}, {}, {}),
    ({"TPU_WORKER_HOSTNAMES": "host-0"}, {}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {}, {"num_processes": 2, "process_id": 1}),
    ({}, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 0},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 0}),
    ({"SLURM_STEP_NUM_TASKS": "4"}, {"num_processes": 1}, None),
])
def test_initialize_distributed_only_on_multi_process_launches(distributed, env, kwargs, expected_call):
    monkeypatch, calls = distributed
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert sharding.initialize_distributed(**kwargs) is (expected_call is not None)
    assert calls == ([] if expected_call is None else [expected_call])
    # Idempotent: a second call does not initialise again.
    assert sharding.initialize_distributed(**kwargs) is (expected_call is not None)
    assert len(calls) <= 1
