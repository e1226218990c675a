"""The Tunix side of bench_generate.py: google-tunix 0.1.7's vanilla sampler on shape A.

Runs in Tunix's own virtual environment (its pinned dependencies differ from rljax's), as
    <tunix-venv>/bin/python experiments/bench_generate_tunix.py '<json request>'
and prints one JSON line: compile (first-call) time, timed runs, versions. The request gives the
model shape, the prompts (token ids, unpadded), the number of new tokens and the repeats.

The model is Tunix's own Qwen3 implementation with random weights (normal, scaled by 1/sqrt(fan
in), norms at 1). Tunix samples one row per prompt, so each prompt is repeated num_samples
times, as Tunix's GRPO learner does. Tokens are passed as strings of ids through a tokenizer that
parses them, so the public `Sampler.__call__` is what is timed; EOS is an id outside the
vocabulary, so every row generates all its tokens.
"""

import json
import sys

import jax
from flax import nnx
from tunix.generate import sampler as sampler_lib
from tunix.models.qwen3 import model as qwen3

import bench_common


class IdTokenizer:
    """Text is space-separated token ids; id 0 is padding."""

    def __init__(self, eos_id):
        self._eos = eos_id

    def encode(self, text, **kwargs):
        return [int(t) for t in text.split()]

    def decode(self, ids, **kwargs):
        return " ".join(map(str, ids))

    def bos_id(self):
        return None

    def eos_id(self):
        return self._eos

    def pad_id(self):
        return 0


def main(request):
    shape = request["model"]
    cfg = qwen3.ModelConfig(
        num_layers=shape["n_layers"], vocab_size=shape["vocab_size"], embed_dim=shape["d_model"],
        hidden_dim=shape["mlp_dim"], num_heads=shape["n_heads"], head_dim=shape["head_dim"],
        num_kv_heads=shape["n_kv_heads"], rope_theta=shape["rope_theta"],
        norm_eps=shape["norm_eps"], use_tied_embedding=True)
    model = qwen3.Qwen3(cfg, rngs=nnx.Rngs(0))
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [jax.random.normal(k, x.shape, x.dtype) * x.shape[0] ** -0.5 if x.ndim > 1
              else jax.numpy.ones(x.shape, x.dtype) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))

    prompt_len, n_new = request["prompt_len"], request["max_new_tokens"]
    sampler = sampler_lib.Sampler(model, IdTokenizer(eos_id=cfg.vocab_size), sampler_lib.CacheConfig(
        cache_size=prompt_len + n_new, num_layers=cfg.num_layers,
        num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
    texts = [" ".join(map(str, p)) for p in request["prompts"] for _ in range(request["num_samples"])]

    def run(seed):
        out = sampler(texts, max_generation_steps=n_new, max_prompt_length=prompt_len,
                      temperature=1.0, top_p=1.0, eos_tokens=[cfg.vocab_size], seed=seed)
        assert all(len(t) == n_new for t in out.tokens), "every row must generate all its tokens"

    print(json.dumps({
        **bench_common.time_calls(run, request["repeats"]), "rows": len(texts),
        "versions": bench_common.versions("google-tunix", "jax", "jaxlib", "flax"),
    }))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
