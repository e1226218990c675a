"""Defaults shared by every experiment config: a tiny from-scratch model on 2-digit arithmetic.

Configs are ml_collections ConfigDicts; any key can be overridden on the command line, e.g.
`--config.rl.steps=10 --config.model.overrides.d_model=64`.
"""

import dataclasses

import ml_collections

from rljax.train.rl import RLConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = ml_collections.ConfigDict(dict(
        name="arithmetic",
        knobs=dict(num_operands=2, digits=2, operators="+-", train_size=12_000, test_size=500),
        data_dir=None,  # default: $RLJAX_DATA_DIR or ~/.cache/rljax/tfds
        prompt="plain",  # "plain" (from-scratch models) or "chat" (chat template)
        answer_format="plain",  # how the answer must be written: plain, hash, boxed, answer_tag
    ))
    config.data = ml_collections.ConfigDict(dict(max_prompt_tokens=24, max_answer_tokens=6))
    config.tokenizer = ml_collections.ConfigDict(dict(kind="sentencepiece", vocab_size=300))
    config.model = ml_collections.ConfigDict(dict(
        source="scratch",  # "scratch", "gguf" or "hf"
        preset="tiny",
        path="",
        overrides=dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
                       max_seq_len=64),
    ))
    config.sft = ml_collections.ConfigDict(dict(
        steps=300, batch_size=64, learning_rate=3e-3, warmup_steps=30, lr_decay="cosine", lr_final_fraction=0.0,
        weight_decay=0.0, micro_batches=1,
    ))
    config.rl = ml_collections.ConfigDict(dataclasses.asdict(RLConfig()))
    config.eval = ml_collections.ConfigDict(dict(every=10, num_examples=200, batch_size=100))
    config.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2))
    # A step with a non-finite loss or gradient is skipped; this many in a row stop the run.
    config.faults = ml_collections.ConfigDict(dict(max_consecutive_nonfinite=5))
    config.log = ml_collections.ConfigDict(dict(tensorboard=True, progress=True))
    # Devices (rljax.sharding.make_mesh): batches split over data x fsdp, params sharded over fsdp
    # and tensor. All 1 is one device; any other mesh must use every device (one axis may be -1:
    # the devices the others leave), on every host.
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    return config
