"""Multi-turn rollouts on 8 devices: with the conversations split over data/fsdp and heads over
tensor, `envs.rollout` returns what it returns on one device (tokens exactly, log-probs to
float32 rounding), the cache growing and continuing across turns on the mesh.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import jax
import numpy as np
import pytest

from rljax import envs, models, sharding

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")

MESHES = [(8, 1, 1), (2, 2, 2), (2, 1, 4)]  # (data, fsdp, tensor)


class Echo(envs.Env):
    def __init__(self, row: int):
        self.row = row

    def reset(self):
        self.turn = 0
        return [{"role": "user", "content": "Say something" + "!" * self.row}]

    def step(self, reply):
        self.turn += 1
        return envs.Step(messages=[{"role": "user", "content": "More" + " please" * self.row}], reward=len(reply) / 10,
                         done=self.turn == 3)


@pytest.fixture(scope="module")
def policy():
    tokenizer = models.load_gguf_tokenizer(models.gguf.smollm2_gguf_path())
    cfg = models.get_config("tiny", vocab_size=tokenizer.vocab_size, n_heads=4, n_kv_heads=2, head_dim=8, d_model=32,
                            mlp_dim=64, n_layers=2, max_seq_len=512)
    params = models.init(cfg, jax.random.PRNGKey(0))
    # Scaled up, <|im_end|> ends some turns early, so rows wait masked while others decode.
    params["embed"]["embedding"] = params["embed"]["embedding"].at[tokenizer.eos_id].multiply(5.0)
    return cfg, params, tokenizer


def _rollout(cfg, params, tokenizer, mesh=None):
    # Greedy: a random policy over 49,152 tokens is near-uniform, and sampling by inverting its CDF
    # could then land on a neighbouring token from float32 rounding alone.
    return envs.rollout(cfg, params, tokenizer, [Echo(row) for row in range(8)], jax.random.PRNGKey(1), max_turns=4,
                        max_new_tokens=10, max_total_tokens=200, temperature=0.0, mesh=mesh)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_rollout_equals_one_device(shape, policy):
    cfg, params, tokenizer = policy
    expected = _rollout(cfg, params, tokenizer)
    mesh = sharding.make_mesh(*shape)
    out = _rollout(cfg, sharding.to_generation_layout(cfg, sharding.shard_params(cfg, params, mesh), mesh), tokenizer,
                   mesh)
    for name in ("tokens", "mask", "loss_mask", "num_turns", "truncated"):
        np.testing.assert_array_equal(getattr(out, name), getattr(expected, name), err_msg=name)
    np.testing.assert_allclose(out.logprobs, expected.logprobs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.rewards, expected.rewards)
    assert expected.loss_mask.sum() > 40 and expected.num_turns.min() == 3
