"""Compiles an RL config's trainer for a TPU topology ahead of time, on this host, without any
weight existing: what each program needs per chip, its collectives, and a step-time floor.

    python experiments/aot_compile.py --config configs/grpo_gsm8k_llama8b_pod.py --topology v5p:2x2x2 \\
        --mesh data=1,fsdp=8,tensor=1 --out aot.json [--config.rl.micro_batches=4 ...]

The topology's devices come from libtpu (`pip install "jax[tpu]"`; `jax.experimental.topologies`),
compile-only: the programs are lowered and compiled for them as `experiments/train.py` would run
them, from `jax.eval_shape` structures, and never executed. The programs (the RL stage's own, by
`rljax.train.preflight.rl_reports`, which the HBM preflight of a real run also compiles):
  learn     the jitted learner (`rljax.train.learner.Learner.learn`): the reference and old passes
            (when the config has them: they run inside it, not as programs of their own), the
            advantages, every update with its optimiser step;
  reshard   the policy copied into the generation layout once per rollout (more than one chip);
  generate  the rollout's prefill and token loop (`num_samples` = rl.group_size).

Each entry of the JSON's "functions" holds per-chip bytes from `memory_analysis()` (arguments,
outputs, aliased, temporaries, peak), `resident_bytes` (the learner's state, which stays on the
chips while the rollout runs) and `needed_bytes` = peak + resident against the chip's `hbm_bytes`
(`fits`), `compile_s`, `collectives` (instructions in the compiled HLO), `flops` (model FLOPs of
the whole program over all chips, from `rljax.models.cost`: XLA's `cost_analysis` counts a loop
body once), and `bound`: the step-time floor max(executed FLOPs / (chips x peak), bytes each chip
must move through HBM / bandwidth) and the MFU that floor implies. For generate,
`decode_gathered_bytes_per_token`: the bytes all-gathered per chip by one iteration of the token
loop; `--training_layout_generate` compiles generate on the training layout instead (no reshard), to
compare. The model: `model.source='scratch'` is the preset with the tokenizer's vocabulary, as
`build_model` makes it; a checkpoint (gguf, hf) is read for its config when it is on this host,
else the architecture of `model.preset` is compiled (the pod configs name theirs).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's own backend: the TPU devices are compile-only
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # beside other processes that loaded libtpu
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `configs`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rljax import models, sharding  # noqa: E402
from rljax.models import cost  # noqa: E402
from rljax.models.cache import init_cache  # noqa: E402
from rljax.train import preflight  # noqa: E402
from rljax.train.config import ExperimentConfig, apply_overrides, experiment_config, load_config_file  # noqa: E402
from rljax.train.learner import Learner  # noqa: E402
from rljax.train.networks import Networks  # noqa: E402
from rljax.train.sharded import MeshStep, batch_shardings, state_shardings  # noqa: E402

GiB = preflight.GiB


def parse_args(argv):
    """(flags, overrides): the flags, and the `--config.<key>=<value>` overrides in order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment config file (configs/*.py)")
    parser.add_argument("--topology", required=True, help="a TPU topology, e.g. v5e:2x2, v5p:2x2x2, v5e:4x4")
    parser.add_argument("--mesh", default=None, help="data=D,fsdp=F,tensor=T (default: the config's mesh)")
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--hlo", default=None, help="a directory to write each compiled program's HLO text to")
    parser.add_argument("--training_layout_generate", action="store_true",
                        help="generate on the training layout (no reshard), to compare what decoding gathers")
    overrides = [arg[len("--config."):] for arg in argv if arg.startswith("--config.")]
    flags = parser.parse_args([arg for arg in argv if not arg.startswith("--config.")])
    if flags.mesh:
        overrides += [f"mesh.{part.strip()}" for part in flags.mesh.split(",")]
    return flags, overrides


def topology_devices(name: str) -> list[jax.Device]:
    """The compile-only devices of TPU topology `name` ("v5e:4x4", "v5p:2x2x2")."""
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(name, "tpu").devices)


def model_config(config: ExperimentConfig) -> models.ModelConfig:
    """The policy's config as `rljax.train.experiment.build_model` makes it, without weights."""
    m = config.model
    if m.source == "scratch":
        if config.tokenizer.kind != "sentencepiece":
            raise SystemExit("aot_compile: a from-scratch model takes its vocabulary from the tokenizer; "
                             "use tokenizer.kind='sentencepiece' (its vocab_size) for an AOT compile")
        return models.get_config(m.preset, vocab_size=config.tokenizer.vocab_size, **m.overrides)
    if m.source == "hf" and os.path.isfile(os.path.join(m.path, "config.json")):
        from rljax.models.hf import config_from_hf

        with open(os.path.join(m.path, "config.json")) as f:
            return config_from_hf(json.load(f)).replace(**m.overrides)
    if m.source == "gguf" and m.path and os.path.isfile(m.path):
        from rljax.models import gguf

        reader = gguf._open(m.path)
        has_output = any(t.name == "output.weight" for t in reader.tensors)
        return gguf.config_from_metadata(gguf.read_metadata(reader), has_output).replace(**m.overrides)
    print(f"aot_compile: model.path={m.path!r} is not on this host: compiling the architecture of "
          f"model.preset={m.preset!r}", file=sys.stderr)
    return models.get_config(m.preset, **m.overrides)


def with_shardings(tree, shardings):
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves, on `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_rl(config: ExperimentConfig, cfg: models.ModelConfig, mesh):
    """(learner, step, state, batch, key, policy): the learner, its mesh step and the step's
    arguments, and the policy's params in the training layout (with their shardings), all
    `jax.ShapeDtypeStruct`s (`jax.eval_shape`): no weight is allocated."""
    rl = config.rl
    networks = Networks(cfg)
    optimizer = rl.optim.make(rl.steps * rl.updates_per_rollout)
    learner = Learner(networks, rl, optimizer, norm_len=rl.sampling.max_new_tokens)

    def init_state(key):
        params = models.init(cfg, key)
        return networks.init_state(optimizer, key, params, None, params if rl.kl.active else None)

    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = jax.eval_shape(init_state, key)
    step = MeshStep(learner.learn, mesh, networks.param_axes(), networks.frozen_axes(state.frozen))
    batch = preflight.batch_like(rl, config.data.max_prompt_tokens)
    sharded = with_shardings(state, state_shardings(state, mesh, step.param_axes, step.rules, step.frozen_axes))
    return learner, step, state, batch, key, networks.generation_params(sharded.params, sharded.frozen)


def generation_flops(cfg, prompts: int, prompt_len: int, samples: int, new_tokens: int) -> int:
    """Model FLOPs of a rollout: the prefill (logits at the last position) and every decoding
    step, whose attention runs over all S = prompt_len + new_tokens - 1 cache slots (masked)."""
    rows, slots = prompts * samples, prompt_len + new_tokens - 1
    attention_extra = 4 * cfg.n_layers * rows * (slots - 1) * cfg.n_heads * cfg.head_dim
    step = cost.forward_flops(cfg, rows, 1) + attention_extra
    return cost.forward_flops(cfg, prompts, prompt_len, logit_rows=prompts) + new_tokens * step


def learn_flops(config: ExperimentConfig, cfg, learner_old_pass: bool) -> tuple[int, int]:
    """(model FLOPs, executed FLOPs with recomputation) of one learner call: every update's
    forward and backward, the reference and old passes; the fused head scores the response."""
    rl = config.rl
    length = config.data.max_prompt_tokens + rl.sampling.max_new_tokens
    rows_u = rl.rows // rl.minibatches
    head_rows = lambda r: r * rl.sampling.max_new_tokens  # noqa: E731
    update = cost.train_step_flops(cfg, rows_u, length, head_rows(rows_u))
    forward = cost.forward_flops(cfg, rl.rows, length, head_rows(rl.rows))
    passes = int(rl.kl.active) + int(learner_old_pass)
    model = rl.updates_per_rollout * update + passes * forward
    recompute = rl.updates_per_rollout * cost.forward_flops(cfg, rows_u, length, head_rows(rows_u)) if cfg.remat else 0
    return model, model + recompute


def measure(config: ExperimentConfig, topology: str, hlo_dir: str | None = None, generation_layout: bool = True) -> dict:
    devices = topology_devices(topology)
    if config.mesh.one_device:
        devices = devices[:1]
    config_mesh = config.mesh
    mesh = sharding.make_mesh(config_mesh.data, config_mesh.fsdp, config_mesh.tensor, devices=devices)
    chip = preflight.chip(devices[0])
    n = len(devices)
    cfg = model_config(config)
    rl = config.rl
    learner, step, state, batch, key, policy = abstract_rl(config, cfg, mesh)
    prompt_len = config.data.max_prompt_tokens
    t0 = time.perf_counter()
    reports = preflight.rl_reports(step, state, batch, key, cfg, policy, mesh, rl, prompt_len, eos_ids=(0,),
                                   generation_layout=generation_layout)
    n_params = models.count_params(policy)
    state_total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    flops = {"learn": learn_flops(config, cfg, learner.old_pass),
             "generate": (generation_flops(cfg, rl.prompts_per_step, prompt_len, rl.group_size,
                                           rl.sampling.max_new_tokens),) * 2,
             "reshard": (0, 0)}
    slots = prompt_len + rl.sampling.max_new_tokens - 1  # the KV cache of the rollout, per chip
    cache = jax.eval_shape(functools.partial(init_cache, cfg, rl.rows, slots))
    cache_bytes = preflight.per_device_bytes(with_shardings(cache, sharding.cache_shardings(cfg, mesh, rl.rows,
                                                                                                slots)))
    functions = {}
    for name, report in reports.items():
        compiled, mem = report["compiled"], report["memory"]
        model_flops, executed = flops[name]
        entry = {"compile_s": round(report["compile_s"], 1), "resident_bytes": report["resident_bytes"],
                 "needed_bytes": report["needed_bytes"], "hbm_bytes": chip.hbm_bytes,
                 "fits": report["needed_bytes"] <= chip.hbm_bytes, "flops": model_flops, "executed_flops": executed}
        if compiled is None:  # XLA refused it: its temporaries alone exceed the chip's memory
            entry.update(fits=False, error=report["error"], xla_available_bytes=report["xla_available_bytes"])
            functions[name] = entry
            continue
        hlo = compiled.as_text()
        if hlo_dir:
            os.makedirs(hlo_dir, exist_ok=True)
            with open(os.path.join(hlo_dir, f"{name}.hlo"), "w") as f:
                f.write(hlo)
        entry.update(**mem, cost_analysis_flops=_cost_flops(compiled), collectives=preflight.collectives(hlo))
        moved = mem["argument_bytes"] + mem["output_bytes"]  # each argument read, each output written once
        if name == "generate":
            loop = preflight.loop_collective_bytes(hlo) or {}
            entry["decode_gathered_bytes_per_token"] = loop.get("all-gather", 0)
            entry["decode_collective_bytes_per_token"] = loop
            # Each token reads the chip's weights and its whole cache.
            moved = rl.sampling.max_new_tokens * (mem["argument_bytes"] + cache_bytes)
            entry["weight_bytes_per_chip"] = mem["argument_bytes"]
            entry["cache_bytes_per_chip"] = cache_bytes
        compute_s = executed / (n * chip.peak_flops)
        memory_s = moved / chip.hbm_bandwidth
        floor = max(compute_s, memory_s)
        entry["bound"] = {"compute_s": compute_s, "memory_s": memory_s, "step_s": floor,
                          "mfu": model_flops / (n * chip.peak_flops * floor) if model_flops else 0.0,
                          "hbm_bytes_moved_per_chip": moved}
        functions[name] = entry
    try:  # what the HBM preflight of `train.py` would say on these chips
        preflight.check_fits(reports, chip.hbm_bytes, cfg, rl, mesh)
        verdict = "fits"
    except preflight.HBMError as error:
        verdict = str(error)
    learn = functions["learn"]
    learn["state_bytes"] = state_total
    learn["state_bytes_per_chip"] = reports["generate"]["resident_bytes"]  # what stays resident: the state
    learn["state_bytes_per_chip_if_all_sharded"] = state_total / n
    learn["batch_bytes_per_chip"] = preflight.per_device_bytes(with_shardings(batch, batch_shardings(batch, mesh)))
    return {
        "topology": topology, "mesh": dict(mesh.shape), "model": _model_name(config, cfg),
        "chip": {"name": chip.name, "hbm_bytes": chip.hbm_bytes, "peak_bf16_flops": chip.peak_flops,
                 "hbm_bandwidth_bytes_per_s": chip.hbm_bandwidth, "count": n},
        "params": n_params, "param_dtype": cfg.param_dtype, "dtype": cfg.dtype, "remat": cfg.remat,
        "scan_layers": cfg.scan_layers, "generation_layout": generation_layout,
        "shape": {"prompts": rl.prompts_per_step, "samples": rl.group_size, "prompt_len": prompt_len,
                  "new_tokens": rl.sampling.max_new_tokens, "micro_batches": rl.micro_batches,
                  "updates": rl.updates_per_rollout, "kl": rl.kl.active},
        "functions": functions, "preflight": verdict, "wall_s": round(time.perf_counter() - t0, 1),
        "jax": jax.__version__,
    }


def _cost_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", 0.0)) if analysis else None


def _model_name(config: ExperimentConfig, cfg) -> str:
    return config.model.preset if config.model.source == "scratch" or not os.path.exists(config.model.path) \
        else config.model.path


def table(result: dict) -> str:
    """The measurements as a text table, one row per program."""
    head = ("function", "needed GiB", "HBM GiB", "fits", "compile s", "AG/RS/AR/A2A", "gathered/token", "floor s",
            "MFU")
    rows = []
    for name, f in result["functions"].items():
        gathered = f.get("decode_gathered_bytes_per_token")
        fits = "yes" if f["fits"] else "NO" + (" (XLA refused)" if "error" in f else "")
        if "error" in f:
            rows.append((name, f">{f['needed_bytes'] / GiB:.2f}", f"{f['hbm_bytes'] / GiB:.2f}", fits,
                         f"{f['compile_s']:.1f}", "", "", "", ""))
            continue
        c = f["collectives"]
        rows.append((name, f"{f['needed_bytes'] / GiB:.2f}", f"{f['hbm_bytes'] / GiB:.2f}", fits, f"{f['compile_s']:.1f}",
                     f"{c['all-gather']}/{c['reduce-scatter']}/{c['all-reduce']}/{c['all-to-all']}",
                     "" if gathered is None else f"{gathered / 2**20:.2f} MiB", f"{f['bound']['step_s']:.3g}",
                     f"{f['bound']['mfu']:.0%}"))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    title = f"{result['model']} ({result['params'] / 1e9:.2f}B) on {result['topology']}, mesh {result['mesh']}"
    return "\n".join([title, line(head)] + [line(r) for r in rows])


def main(argv):
    flags, overrides = parse_args(argv)
    from rljax.train.config import ConfigError

    devices = topology_devices(flags.topology)
    try:
        config = experiment_config(apply_overrides(load_config_file(flags.config), overrides), n_devices=len(devices))
    except ConfigError as error:
        sys.exit(str(error))
    result = measure(config, flags.topology, flags.hlo, not flags.training_layout_generate)
    print(table(result))
    print(result["preflight"])
    if flags.out:
        os.makedirs(os.path.dirname(os.path.abspath(flags.out)), exist_ok=True)
        with open(flags.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
