"""Supervised fine-tuning (SFT) of a pretrained model on instruction demonstrations.

Run (tiny: a few minutes on a 2-core CPU), after pretraining with the world:
  python -m experiments.pretrain --config=configs/pretrain.py:tiny+world --workdir=/tmp/pt_tiny
  python -m experiments.sft --config=configs/sft.py:tiny --pretrained=/tmp/pt_tiny \
      --workdir=/tmp/sft_tiny

Evaluates the pretrained model (zero-shot, few-shot, chat template) and the
SFT model (chat template) on held-out prompts of every task family, and
writes into --workdir: config.json (with the pretrained run's model and data
sections), tokenizer.model, checkpoints/, metrics.jsonl and eval.json.
Rerunning the same command resumes. Then talk to it:
  python -m experiments.chat --workdir=/tmp/sft_tiny
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import sft as sft_configs
from gptjax import cli, sft, sharding

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/sft.py:tiny", "Config file and preset, e.g. configs/sft.py:small."
)
_PRETRAINED = flags.DEFINE_string(
  "pretrained", None, "Workdir of the pretraining run to start from (default: config.pretrained)."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sft", "Where checkpoints and metrics go.")

sharding.define_flags()  # --coordinator_address, --num_processes, --process_id


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sharding.initialize_from_flags()  # before anything starts JAX's backend
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = cli.checked(_CONFIG.value, sft_configs.get_config)
  _, summary, report = sft.run(config, _WORKDIR.value, _PRETRAINED.value)
  table = report["table"]["MEAN"]
  print(
    f"done: {summary['steps']} steps; mean gold score "
    + "  ".join(f"{k} {v:.3f}" for k, v in table.items())
    + f"; eval.json in {_WORKDIR.value}"
  )


if __name__ == "__main__":
  cli.run(main)
