"""Train a reward model from K-way rankings of the SFT policy's samples.

Run (after experiments.sft):
  python -m experiments.reward_model --config=configs/reward_model.py:tiny \
      --sft=runs/sft_tiny --workdir=runs/rm_tiny
  python -m experiments.reward_model --config=configs/reward_model.py:small \
      --config.comparisons.k=9 --sft=runs/sft_small --workdir=runs/rm_small_k9

Writes comparisons/ (reused by later runs), checkpoints/, metrics.jsonl,
reward_model.json (bias shift so SFT samples score mean 0, and their std),
eval.json (held-out accuracy vs labeler and vs gold, calibration, data
scaling), calibration.png and data_scaling.png into --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import reward_model as rm_configs
from gptjax import cli, sharding
from gptjax.reward_model import training as rm_training

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/reward_model.py:tiny", "Config file and preset."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/reward_model", "Where outputs go.")
_SFT = flags.DEFINE_string("sft", None, "The SFT run's workdir (the policy).")

sharding.define_flags()  # --coordinator_address, --num_processes, --process_id


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sharding.initialize_from_flags()  # before anything starts JAX's backend
  logging.set_verbosity(logging.WARNING)
  config = cli.checked(_CONFIG.value, rm_configs.get_config)
  rm_training.run(config, _WORKDIR.value, _SFT.value)


if __name__ == "__main__":
  cli.run(main)
