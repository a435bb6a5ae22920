"""RLHF: PPO with a per-token KL penalty to the SFT policy (optionally PPO-ptx).

Run (after experiments.sft and experiments.reward_model):
  python -m experiments.rlhf --config=configs/rlhf.py:tiny --sft=runs/sft_tiny \
      --reward_model=runs/rm_tiny --workdir=runs/rlhf_tiny
  python -m experiments.rlhf --config=configs/rlhf.py:tiny --config.ppo.ptx_coef=1.0 \
      --sft=runs/sft_tiny --reward_model=runs/rm_tiny --workdir=runs/rlhf_tiny_ptx

Writes checkpoints/ (resumable mid-RL), metrics.jsonl (one record per PPO
iteration), eval.json (win rate vs SFT, per-family gold, hallucination and
decline rates, alignment tax), curves.png and overoptimization.png.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import rlhf as rlhf_configs
from gptjax import cli, sharding
from gptjax.rlhf import loop as rlhf_loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/rlhf.py:tiny", "Config and preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/rlhf", "Where outputs go.")
_SFT = flags.DEFINE_string("sft", None, "SFT workdir: the initial policy and the KL reference.")
_RM = flags.DEFINE_string("reward_model", None, "Reward-model workdir.")

sharding.define_flags()  # --coordinator_address, --num_processes, --process_id


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sharding.initialize_from_flags()  # before anything starts JAX's backend
  logging.set_verbosity(logging.WARNING)
  config = cli.checked(_CONFIG.value, rlhf_configs.get_config)
  rlhf_loop.run(config, _WORKDIR.value, _SFT.value, _RM.value)


if __name__ == "__main__":
  cli.run(main)
