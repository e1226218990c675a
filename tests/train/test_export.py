"""`export_policy`: a LoRA policy leaves a Hugging Face directory that transformers loads as it is
(AutoModelForCausalLM with rljax's logits, AutoTokenizer with rljax's ids and chat template,
generation stopping at the end of the turn), written atomically; an export of other weights is
refused and nothing is left half-written."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import models
from rljax.models import lora
from rljax.train.export import ExportError, export_policy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf_path = pytest.importorskip("rljax.models.gguf").smollm2_gguf_path


@pytest.fixture(scope="module")
def tokenizer():
    try:
        return models.load_gguf_tokenizer(gguf_path())
    except FileNotFoundError as error:
        pytest.skip(str(error))


def _policy(tokenizer, seed=0):
    base_cfg = models.get_config("tiny", vocab_size=tokenizer.vocab_size, tie_embeddings=True, norm_eps=1e-5)
    cfg = lora.with_lora(base_cfg, rank=4)
    adapters = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.PRNGKey(seed + 1), x.shape),
                            lora.init_adapters(cfg, jax.random.PRNGKey(seed)))  # B away from 0
    return cfg, {**models.init(base_cfg, jax.random.PRNGKey(seed)), models.ADAPTERS: adapters}


def test_transformers_loads_the_export_with_rljaxs_logits_ids_and_template(tmp_path, tokenizer):
    cfg, policy = _policy(tokenizer)
    path = export_policy(cfg, policy, tokenizer, str(tmp_path / "export"))
    assert sorted(os.listdir(path)) == ["adapter", "config.json", "generation_config.json", "model.safetensors",
                                        "tokenizer.json", "tokenizer_config.json"]
    assert os.listdir(tmp_path) == ["export"]  # no temporary directory left behind

    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is 37 + 48?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    ids = tokenizer.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits.numpy()
    got, _ = models.apply(cfg, policy, jnp.asarray([ids]))
    assert np.max(np.abs(np.asarray(got) - want)) <= 1e-4
    end_of_turn = hf_tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in np.atleast_1d(model.generation_config.eos_token_id)


def test_the_same_export_is_kept_and_other_weights_are_refused(tmp_path, tokenizer):
    cfg, policy = _policy(tokenizer)
    path = export_policy(cfg, policy, tokenizer, str(tmp_path / "export"))
    stamp = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    export_policy(cfg, policy, tokenizer, path)  # a rerun of a finished run: nothing to do
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == stamp
    _, other = _policy(tokenizer, seed=1)
    with pytest.raises(ExportError, match="already holds another model"):
        export_policy(cfg, other, tokenizer, path)
    assert os.listdir(tmp_path) == ["export"]
    assert json.loads(open(os.path.join(path, "adapter", "adapter_config.json")).read())["r"] == 4
