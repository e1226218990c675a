"""Gradient-estimator study against exact policy gradients: one command, all outputs.

    python experiments/estimators/run_study.py [--config configs/estimator_study.py] \
        [--config.tabular.n_seeds=500] [--config.out_dir=/tmp/study]

For the tabular policy (every estimator, every G) and the tiny transformer (a subset), measures
bias, variance, cosine and cost against the exact ∇J (`rljax.estimators.study.evaluate`), and the
exact expected gradient of each KL penalty in the loss (`kl_loss_table`). Writes to out_dir:
results.json (every number), tables.md, and PNG plots (bias, direction bias, variance and
cosine against G; cosine against cost). REPORT.md, beside them, is written by hand from these.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from absl import app  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "estimator_study.py"), "study config file"
)

# Metrics tabulated against G: (key, title, format).
METRICS = (
    ("rel_bias", "relative bias ‖ḡ − ∇J‖/‖∇J‖ (* : above the 99% noise bound)", "{:.3f}"),
    ("direction_bias", "direction bias ‖ḡ − c·∇J‖/‖∇J‖ (* : above the 99% noise bound)", "{:.3f}"),
    ("scale", "scale c = ⟨ḡ, ∇J⟩/‖∇J‖² ± its standard error", "{:.3f}"),
    ("matched_variance", "variance of ĝ/c, tr Cov/(c²‖∇J‖²)", "{:.3g}"),
    ("cosine", "mean cosine(ĝ, ∇J) over seeds", "{:.3f}"),
)


def build_testbed(config, policy):
    from rljax.estimators import make_testbed

    sub = config[policy]
    extra = {"init_scale": sub.init_scale} if policy == "tabular" else dict(sub.model)
    return make_testbed(
        policy, vocab_size=config.vocab_size, max_len=config.max_len, ref_scale=sub.ref_scale,
        stale_scale=sub.stale_scale, **extra,
    )


def describe_testbed(bed, beta):
    """Per-prompt reward moments, greedy rewards and KLs under θ, and the exact J terms."""
    import jax
    import jax.numpy as jnp

    from rljax.estimators import exact_gradients, objective_terms

    @jax.jit
    def arrays(params, ref_params, old_params):
        logp = bed.sequence_logprobs(params)
        prob = jnp.exp(logp)
        rewards = bed.rewards()
        mean = jnp.sum(prob * rewards, -1)
        old = bed.sequence_logprobs(old_params)
        per_prompt = {
            "reward_mean": mean,
            "reward_std": jnp.sqrt(jnp.sum(prob * jnp.square(rewards - mean[:, None]), -1)),
            "greedy_reward": bed.reward(*bed.greedy(params)),
            "mean_length": jnp.sum(prob * bed.responses.mask.sum(-1), -1),
            "entropy": -jnp.sum(prob * logp, -1),
            "kl_ref": jnp.sum(prob * (logp - bed.sequence_logprobs(ref_params)), -1),
            "kl_old": jnp.sum(jnp.exp(old) * (old - logp), -1),
        }
        return per_prompt, objective_terms(bed, params, beta)

    per_prompt, terms = arrays(bed.params, bed.ref_params, bed.old_params)
    grads = exact_gradients(bed, bed.params, beta)
    tasks = [" + ".join(f"{s:g}·{n}" for n, s in task) for task in bed.tasks]
    return {
        "num_params": int(grads["reward"].shape[0]),
        "num_responses": int(bed.responses.tokens.shape[0]),
        "terms": {k: float(v) for k, v in terms.items()},
        "grad_norms": {k: float(jnp.linalg.norm(v)) for k, v in grads.items()},
        "per_prompt": {"task": tasks, **{k: [float(x) for x in v] for k, v in per_prompt.items()}},
    }


def run(config):
    """Runs the study; returns every number as a JSON-able dict."""
    import jax

    from rljax.estimators import study

    start = time.perf_counter()
    panels = {p: study.PANELS[p] for p in config.panels}
    results = {"config": config.to_dict(), "panels": panels, "policies": {}}
    policies = ["tabular"] + (["transformer"] if config.transformer.enabled else [])
    for policy in policies:
        t0 = time.perf_counter()
        bed = build_testbed(config, policy)
        names = list(dict.fromkeys(n for p in panels.values() for n in p))
        group_sizes = config.group_sizes
        n_seeds = config[policy].n_seeds
        if policy == "transformer":
            names = [n for n in names if n in config.transformer.estimators]
            group_sizes = config.transformer.group_sizes
        betas = {n: config.kl_beta if n in panels.get("kl", ()) else 0.0 for n in names}
        rows = study.evaluate(bed, names, group_sizes, n_seeds, betas, seed=config.seed)
        results["policies"][policy] = {
            "testbed": describe_testbed(bed, config.kl_beta),
            "rows": rows,
            "kl_loss_table": study.kl_loss_table(bed),
            "seconds": time.perf_counter() - t0,
        }
        print(f"{policy}: {len(names)} estimators x {len(group_sizes)} G x {n_seeds} seeds in "
              f"{results['policies'][policy]['seconds']:.1f} s", flush=True)
    results["seconds"] = time.perf_counter() - start
    results["platform"] = {
        "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
    return results


# ---------------------------------------------------------------------------- tables


def _fmt(row, key, fmt):
    text = fmt.format(row[key])
    if key == "scale":
        text += "±" + fmt.format(row["scale_se"])
    if key == "rel_bias" and row["bias"] > row["bias_bound"]:
        text += "*"
    if key == "direction_bias" and row["direction_bias"] > row["direction_bound"]:
        text += "*"
    return text


def _summary_cells(r):
    return [r["estimator"], r["advantage"], r["surrogate"], r["agg"], r["kl"], f"{r['beta']:g}",
            _fmt(r, "rel_bias", "{:.3f}"), f"{r['direction_bound']:.3f}", _fmt(r, "direction_bias", "{:.3f}"),
            f"{r['scale']:.3f}", f"{r['rel_variance']:.3g}", f"{r['cosine']:.3f}", f"{r['rel_mse']:.3g}",
            r["generated"], r["forward"], r["train"]]


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(x) for x in line) + " |" for line in lines]
    return "\n".join(out)


def tables(results):
    """The study's markdown tables."""
    md = ["# Estimator study: tables", "",
          f"Generated by `experiments/estimators/run_study.py` in {results['seconds']:.0f} s "
          f"({results['platform']['cpus']} CPUs, jax {results['platform']['jax']}). "
          "Bias bound: 2.576·sqrt(tr Cov/n), a 99% bound on ‖ḡ − E ĝ‖ whatever the covariance "
          "(see `rljax/estimators/stats.py`).", ""]
    for policy, res in results["policies"].items():
        bed, rows = res["testbed"], res["rows"]
        md += [f"## {policy} policy", "",
               f"{bed['num_params']} parameters; {bed['num_responses']} responses per prompt. "
               f"At θ: E[R] = {bed['terms']['reward']:.4f}, KL(π‖π_ref) = {bed['terms']['kl']:.4f}; "
               f"‖∇E[R]‖ = {bed['grad_norms']['reward']:.4f}, ‖∇KL‖ = {bed['grad_norms']['kl']:.4f}.", ""]
        pp = bed["per_prompt"]
        md += [_table(["prompt", *pp], [[i, *(v[i] if isinstance(v[i], str) else f"{v[i]:.3g}" for v in pp.values())]
                                        for i in range(len(pp["task"]))]), ""]
        group_sizes = sorted({r["G"] for r in rows})
        by = {(r["estimator"], r["G"]): r for r in rows}
        for panel, names in results["panels"].items():
            names = [n for n in names if (n, group_sizes[0]) in by]
            if not names:
                continue
            beta = by[(names[-1], group_sizes[0])]["beta"]
            md += [f"### {policy}: panel `{panel}` (β = {beta:g})", ""]
            for key, title, fmt in METRICS:
                md += [f"{title}:", "",
                       _table(["estimator", *(f"G={g}" for g in group_sizes)],
                              [[n, *(_fmt(by[(n, g)], key, fmt) for g in group_sizes)] for n in names]), ""]
        g_mid = group_sizes[len(group_sizes) // 2]
        header = ["estimator", "advantage", "surrogate", "agg", "kl", "β", "rel bias", "99% bound (rel)",
                  "dir. bias", "scale", "tr Cov/‖∇J‖²", "cosine", "rel MSE", "generated", "forward", "train"]
        md += [f"### {policy}: every estimator at G = {g_mid}", "",
               _table(header, [_summary_cells(r) for r in rows if r["G"] == g_mid]), ""]
        kl_rows = [[r["kind"], r["agg"], f"{r['rel_error']:.3g}", f"{r['cosine']:.3f}", f"{r['norm_ratio']:.3g}"]
                   for r in res["kl_loss_table"]]
        md += [f"### {policy}: KL penalty in the loss, exact expected gradient vs ∇KL(π‖π_ref)", "",
               _table(["estimator", "aggregation", "‖E∇loss − ∇KL‖/‖∇KL‖", "cosine", "‖E∇loss‖/‖∇KL‖"],
                      kl_rows), ""]
    return "\n".join(md)


# ----------------------------------------------------------------------------- plots


def plots(results, out_dir):
    """PNG figures, one row of panels per figure; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per estimator in every figure: the unbiased references black, the others
    # tab10 by their place in their panel.
    references = ("rloo", "kl_reward_k1")
    colour = {name: "k" for name in references}
    for names in results["panels"].values():
        others = [n for n in names if n not in references]
        colour.update({n: f"C{i % 10}" for i, n in enumerate(others) if n not in colour})
    files = []
    figures = (
        ("bias", "rel_bias", "relative bias ‖ḡ − ∇J‖ / ‖∇J‖", "log"),
        ("direction_bias", "direction_bias", "direction bias ‖ḡ − c∇J‖ / ‖∇J‖", "log"),
        ("variance", "matched_variance", "variance of ĝ/c:  tr Cov / (c² ‖∇J‖²)", "log"),
        ("cosine", "cosine", "mean cosine(ĝ, ∇J)", "linear"),
    )
    for policy, res in results["policies"].items():
        rows = res["rows"]
        present = {r["estimator"] for r in rows}
        panels = {p: [n for n in names if n in present] for p, names in results["panels"].items()}
        panels = {p: names for p, names in panels.items() if names}
        series = {n: sorted((r for r in rows if r["estimator"] == n), key=lambda r: r["G"]) for n in present}
        for stem, key, ylabel, yscale in figures:
            ncols = min(2, len(panels))
            nrows = -(-len(panels) // ncols)
            fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.0 * nrows), sharey=True, squeeze=False)
            for ax, (panel, names) in zip(axes.flat, panels.items()):
                for name in names:
                    pts = series[name]
                    gs, ys = [r["G"] for r in pts], [max(r[key], 1e-4) for r in pts]
                    ax.plot(gs, ys, "-", color=colour[name], label=name, lw=1.6)
                    if key in ("rel_bias", "direction_bias"):
                        # The 99% noise bound (dotted); a filled marker lies above it.
                        bounds = [r["bias_bound"] / r["grad_norm"] if key == "rel_bias" else r["direction_bound"]
                                  for r in pts]
                        ax.plot(gs, bounds, ":", color=colour[name], lw=0.9)
                        for g, y, b in zip(gs, ys, bounds):
                            ax.plot(g, y, "o", color=colour[name], mfc=colour[name] if y > b else "white", ms=5)
                    else:
                        ax.plot(gs, ys, "o", color=colour[name], ms=4)
                if key == "matched_variance":
                    first = series[names[0]]
                    ax.plot([r["G"] for r in first], [first[0][key] * first[0]["G"] / r["G"] for r in first],
                            "k--", lw=0.8, label="∝ 1/G")
                ax.set_xscale("log", base=2)
                ax.set_yscale(yscale)
                ax.set_title(f"{panel} (β = {series[names[-1]][0]['beta']:g})", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7, loc="best", framealpha=0.8)
            for ax in axes[-1]:
                ax.set_xlabel("group size G")
            for ax in axes[:, 0]:
                ax.set_ylabel(ylabel)
            for ax in axes.flat[len(panels):]:
                ax.axis("off")
            title = policy + (": filled marker = above its 99% noise bound (dotted)"
                              if key in ("rel_bias", "direction_bias") else "")
            fig.suptitle(title, fontsize=11)
            fig.tight_layout()
            name = f"{policy}_{stem}.png"
            fig.savefig(os.path.join(out_dir, name), dpi=100)
            plt.close(fig)
            files.append(name)

        # Cost: cosine against the sequences processed per estimate (generated + forward + train).
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for panel, style in (("baselines", "-"), ("stale", "--")):
            for name in panels.get(panel, ()):
                if panel == "stale" and name in panels.get("baselines", ()):
                    continue
                pts = [(r["generated"] + r["forward"] + r["train"], r["cosine"]) for r in series[name]]
                ax.plot(*zip(*pts), marker="o", ls=style, color=colour[name], label=name, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequences processed per estimate (generated + no-grad forward + train)")
        ax.set_ylabel("mean cosine(ĝ, ∇J)")
        ax.set_title(f"{policy}: accuracy against cost (dashed: stale sampler)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"{policy}_cost.png"
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)
        files.append(name)
    return files


def write_outputs(results, out_dir):
    """results.json, tables.md and the PNGs under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "tables.md"), "w") as f:
        f.write(tables(results) + "\n")
    return plots(results, out_dir)


def main(argv):
    del argv
    import jax

    # As experiments/train.py: compiled programs are cached on disk, so a rerun skips most of the
    # compilation that dominates this study's runtime (the reported runtime is a cold run).
    jax.config.update("jax_compilation_cache_dir",
                      os.environ.get("RLJAX_COMPILE_CACHE", os.path.expanduser("~/.cache/rljax/jax")))
    config = _CONFIG.value
    out_dir = config.out_dir if os.path.isabs(config.out_dir) else os.path.join(ROOT, config.out_dir)
    start = time.perf_counter()
    results = run(config)
    files = write_outputs(results, out_dir)
    print(f"study: {results['seconds']:.1f} s compute, {time.perf_counter() - start:.1f} s total; "
          f"wrote results.json, tables.md, {', '.join(files)} to {out_dir}")


if __name__ == "__main__":
    app.run(main)
