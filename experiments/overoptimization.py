"""Reward over-optimisation across RLHF runs: gold and proxy score against sqrt(KL).

Run (after several experiments.rlhf runs that differ in beta, ptx or RM):
  for b in 0.05 0.1 0.2 0.5; do
    python -m experiments.rlhf --config=configs/rlhf.py:tiny --config.ppo.beta=$b \
        --sft=runs/sft_tiny --reward_model=runs/rm_tiny --workdir=runs/beta_tiny/beta_$b
  done
  python -m experiments.overoptimization --runs=runs/beta_tiny/beta_0.05,runs/beta_tiny/beta_0.1 \
      --out=runs/beta_tiny

Reads each run's config.json and metrics.jsonl (nothing is recomputed) and
writes overoptimization_runs.json and overoptimization_runs.png into --out;
prints where each run's gold score peaked and where it ended.
"""

from absl import app, flags

from gptjax import cli
from gptjax.rlhf import overoptimization

_RUNS = flags.DEFINE_list("runs", None, "RLHF workdirs, comma-separated.", required=True)
_OUT = flags.DEFINE_string("out", "runs/overoptimization", "Where the JSON and PNG go.")
_BINS = flags.DEFINE_integer("bins", 8, "sqrt(KL) bins per run.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = overoptimization.compare(_RUNS.value, _BINS.value)
  for line in overoptimization.summary_lines(result):
    print(line)
  json_path, png_path = overoptimization.write(result, _OUT.value)
  print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
  cli.run(main)
