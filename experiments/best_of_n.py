"""Best-of-n: the SFT policy's samples reranked by the reward model and by the oracle.

Run (after experiments.sft and experiments.reward_model, or the pipeline's
stages pretrain,sft,reward_model):
  python -m experiments.best_of_n --config=configs/best_of_n.py:tiny --sft=runs/sft_tiny \
      --reward_model=runs/rm_tiny --workdir=runs/best_of_n_tiny
  python -m experiments.best_of_n --config=configs/best_of_n.py:tiny \
      --sft=/tmp/pipe/sft --reward_model=/tmp/pipe/reward_model --workdir=/tmp/pipe/best_of_n

Writes eval.json: for each picker (reward_model, oracle) and n in
config.best_of_n.ns, the win rate against greedy SFT on the held-out prompts
(paired bootstrap interval, expected W/T/L), mean gold, per-family rates and
the KL bound log n - (n - 1)/n; and a `table` row per method for reports.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import best_of_n as best_of_n_configs
from gptjax import cli
from gptjax.rlhf import best_of_n

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/best_of_n.py:tiny", "Config and preset."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/best_of_n", "Where outputs go.")
_SFT = flags.DEFINE_string("sft", None, "SFT workdir: the policy that samples.")
_RM = flags.DEFINE_string("reward_model", None, "Reward-model workdir: the picker.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = cli.checked(_CONFIG.value, best_of_n_configs.get_config)
  best_of_n.run(config, _WORKDIR.value, _SFT.value, _RM.value)


if __name__ == "__main__":
  cli.run(main)
