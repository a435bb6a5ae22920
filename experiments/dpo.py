"""DPO: Direct Preference Optimization from the SFT policy on the reward model's comparisons.

Run (after experiments.sft and experiments.reward_model, or the pipeline's
stages pretrain,sft,reward_model):
  python -m experiments.dpo --config=configs/dpo.py:tiny --sft=runs/sft_tiny \
      --reward_model=runs/rm_tiny --workdir=runs/dpo_tiny
  python -m experiments.dpo --config=configs/dpo.py:tiny \
      --sft=/tmp/pipe/sft --reward_model=/tmp/pipe/reward_model --workdir=/tmp/pipe/dpo

Writes an LM run (config.json, tokenizer.model, checkpoints/: chat and
`runs.load_run` accept it like an SFT run), metrics.jsonl and eval.json (win
rate vs SFT with a paired bootstrap interval and W/T/L, per-family gold,
hallucination and decline rates, implicit-reward accuracy, KL to SFT).
Rerunning the same command resumes.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import dpo as dpo_configs
from gptjax import cli, sharding
from gptjax.rlhf import dpo

_CONFIG = config_flags.DEFINE_config_file("config", "configs/dpo.py:tiny", "Config and preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/dpo", "Where outputs go.")
_SFT = flags.DEFINE_string("sft", None, "SFT workdir: the initial policy and the reference.")
_RM = flags.DEFINE_string("reward_model", None, "Reward-model workdir (its comparisons/).")

sharding.define_flags()  # --coordinator_address, --num_processes, --process_id


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sharding.initialize_from_flags()  # before anything starts JAX's backend
  logging.set_verbosity(logging.WARNING)
  config = cli.checked(_CONFIG.value, dpo_configs.get_config)
  dpo.run(config, _WORKDIR.value, _SFT.value, _RM.value)


if __name__ == "__main__":
  cli.run(main)
