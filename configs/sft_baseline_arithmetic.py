"""The baseline of the main job: SFT alone on the same task and model, annealed to 0, for as many
steps as the main job's whole budget buys (250 SFT steps + 400 GRPO iterations take about as long
as 2,000 SFT steps on a 2-core CPU). `experiments/run_seeds.py --baseline` runs it at several
lengths and keeps the one with the best validation accuracy, so RL is compared against the
strongest SFT run to the same budget, not against its own warm start.

    python experiments/train.py --config configs/sft_baseline_arithmetic.py --workdir /tmp/sft_baseline
"""

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.sft.steps = 2000
    config.sft.optim.lr_final_fraction = 0.0
    config.rl.steps = 0
    return config
