"""Export a trained policy as a Hugging Face model directory, and its LoRA adapter for PEFT.

`export_policy(cfg, params, tokenizer, path)` writes what `transformers.AutoModelForCausalLM`
and `AutoTokenizer.from_pretrained(path)` load as they are:

  config.json, model.safetensors   the policy, LoRA adapters merged (`models.save_hf`)
  tokenizer.json, tokenizer_config.json   the tokenizer with its chat template
  generation_config.json           the end-of-turn ids, so that `generate` stops where rljax does
  adapter/                         with LoRA: the adapter alone, in PEFT's layout (`models.save_peft`)

Nothing half-written is left behind: the directory is written beside `path` under a temporary
name and renamed into place. A `path` that already holds an export of another model is refused
(`ExportError`, naming it); one of the same weights (a rerun of a finished run) is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from rljax import models
from rljax.models import lora
from rljax.models.config import ModelConfig


class ExportError(ValueError):
    """The export directory cannot be written as asked (one line)."""


def _digest(path: str) -> str | None:
    """sha256 of a directory's config.json and model.safetensors, or None when it has none."""
    digest = hashlib.sha256()
    try:
        for name in ("config.json", "model.safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def export_policy(cfg: ModelConfig, params, tokenizer, path: str, base_model: str = "") -> str:
    """Writes the policy (`params`: plain, or with LoRA adapters) and `tokenizer` (a
    `rljax.data.tokenizers.BPETokenizer`) to the Hugging Face directory `path`; returns it."""
    base_cfg = cfg.replace(lora_rank=0)
    merged = lora.merge(cfg, params) if cfg.lora_rank else params
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        models.save_hf(base_cfg, merged, tmp)
        if os.path.exists(path):
            if _digest(path) == _digest(tmp):
                return path  # this model's export is already there
            raise ExportError(f"{path} already holds another model (other weights or config): export elsewhere "
                              "or move it away")
        tokenizer.save_hf(tmp)
        eos = [i for i in dict.fromkeys((tokenizer.eos_id, *tokenizer.eos_ids)) if i is not None]
        generation = {"eos_token_id": eos, "bos_token_id": tokenizer.bos_id,
                      "pad_token_id": tokenizer.pad_id if tokenizer.pad_id is not None else eos[0]}
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
        if cfg.lora_rank:
            models.save_peft(cfg, params, os.path.join(tmp, "adapter"), base_model=base_model)
        os.replace(tmp, path)
        return path
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
