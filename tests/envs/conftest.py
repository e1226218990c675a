"""A tiny random policy that speaks SmolLM2's vocabulary, for multi-turn rollouts.

Its embedding row of <|im_end|> is scaled up, so that turns end by the policy's own stop token
as often as by running out of tokens: both ways a turn ends are exercised."""

import jax
import pytest

from rljax import models


@pytest.fixture(scope="session")
def chatty_policy(smollm2_tokenizer):
    cfg = models.get_config("tiny", vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=512)
    params = models.init(cfg, jax.random.PRNGKey(0))
    stop = smollm2_tokenizer.eos_id
    table = params["embed"]["embedding"]
    params["embed"]["embedding"] = table.at[stop].multiply(5.0)
    return cfg, params
