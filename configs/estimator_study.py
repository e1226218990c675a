"""Gradient-estimator study against exact policy gradients (`rljax.estimators`).

    python experiments/estimators/run_study.py --config configs/estimator_study.py
    python experiments/estimators/run_study.py --config configs/estimator_study.py \
        --config.tabular.n_seeds=500 --config.transformer.enabled=False

Every estimator of `rljax.estimators.ESTIMATORS`, at each group size G, over n_seeds seeds,
against the exact gradient by enumeration. Panels (`rljax.estimators.study.PANELS`) group the
estimators; the KL panel's J has β = kl_beta, the others β = 0 (J = E[R]).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.out_dir = "experiments/estimators"
    c.seed = 0
    c.group_sizes = (2, 4, 8, 16, 32)
    c.panels = ("baselines", "stale", "aggregation", "kl")
    # β of J in the KL panel: large enough that β·∇KL is about half of ∇E[R] here, so that what
    # each KL placement does to the gradient is measurable.
    c.kl_beta = 0.5
    c.vocab_size = 4  # V, token 0 = EOS
    c.max_len = 4  # L: 121 responses per prompt

    c.tabular = ml_collections.ConfigDict()
    c.tabular.n_seeds = 2000
    c.tabular.init_scale = 1.0  # logits ~ N(0, init_scale²)
    c.tabular.ref_scale = 0.5  # π_ref = perturb(θ, ref_scale): KL(π‖π_ref) ≈ 0.07-0.12 per prompt
    c.tabular.stale_scale = 0.15  # π_old = perturb(θ, stale_scale): KL(π_old‖π) ≈ 0.01-0.02

    c.transformer = ml_collections.ConfigDict()
    c.transformer.enabled = True
    c.transformer.n_seeds = 300
    c.transformer.group_sizes = (2, 8, 32)
    # A subset (compiling the transformer's gradients is most of its cost): one reference per
    # panel (rloo; kl_loss_seq_k2, exact for the KL) and the estimators whose bias the tabular
    # study finds.
    c.transformer.estimators = (
        "rloo", "grpo", "dr_grpo", "ppo_clip", "agg_seq_mean_token_mean",
        "kl_loss_k1", "kl_loss_k2", "kl_loss_seq_k2",
    )
    c.transformer.ref_scale = 0.12
    c.transformer.stale_scale = 0.05
    # models.get_config("tiny", ...) overrides: vocabulary V + P = 8 tokens, ~9.6k parameters.
    c.transformer.model = ml_collections.ConfigDict(
        dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    )
    return c
