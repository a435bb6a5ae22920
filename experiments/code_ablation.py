"""Code-data ablation: pretrain at several code fractions x seeds, SFT each, probe, report.

Run (tiny: minutes on a 2-core CPU; small: about two hours, 9-12 minutes a run):
  python -m experiments.code_ablation --config=configs/code_ablation.py:tiny \
      --workdir=/tmp/ablation_tiny
  python -m experiments.code_ablation --config=configs/code_ablation.py:small \
      --workdir=runs/ablation_small --dry_run        # the runs and their mixtures
  python -m experiments.code_ablation --config=configs/code_ablation.py:small \
      --workdir=runs/ablation_small --shard=1/3      # runs 1, 4, 7, ... (one process of 3)
  python -m experiments.code_ablation --config=configs/code_ablation.py:small \
      --workdir=runs/ablation_small --analyze_only   # after all shards finished

Each run is an ordinary pretraining workdir in <workdir>/points/<name>/ with its
SFT in <name>/sft/. Rerunning the same command skips finished runs (done.json)
and resumes interrupted ones; failed runs leave error.txt. Afterwards (unless
--shard splits the runs or --skip_analysis) it writes summary.json, report.md
and PNG plots into --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import code_ablation as ablation_configs
from gptjax import cli
from gptjax.scaling import ablation, ablation_report, grid

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/code_ablation.py:tiny", "Ablation config and preset."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "Where the runs and results go.")
_CACHE_DIR = flags.DEFINE_string(
  "cache_dir", None, "Prepared datasets and token streams (default ~/.cache/gptjax)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs; run nothing.")
_SHARD = flags.DEFINE_string("shard", "0/1", "'i/n': run points i, i+n, i+2n, ...")
_ANALYZE_ONLY = flags.DEFINE_bool("analyze_only", False, "Only write summary, report, plots.")
_SKIP_ANALYSIS = flags.DEFINE_bool("skip_analysis", False, "Run points without analysing.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = cli.checked(_CONFIG.value, ablation_configs.get_config)
  workdir = _WORKDIR.value
  i, n = grid.parse_shard(_SHARD.value)
  points = ablation.make_points(config)
  if _DRY_RUN.value:
    for p in grid.shard(points, i, n):
      mixture = ", ".join(f"{k} {v:.3f}" for k, v in p.config.data.mixture.items())
      print(
        f"# {p.index:3d} {p.name}: N={p.N:,} (all {p.n_params:,}) D={p.tokens:,} "
        f"C={p.flops:.3g}; mixture {mixture}; seed {p.config.seed}"
      )
    return
  if not _ANALYZE_ONLY.value:
    status = ablation.run_ablation(config, workdir, _CACHE_DIR.value, (i, n), points=points)
    print(
      f"done: ran {len(status['ran'])}, skipped {len(status['skipped'])} finished, "
      f"failed {len(status['failed'])}"
    )
    for f in status["failed"]:
      print(f"  FAILED {f['name']}: {f['error']}  ({f['traceback']})")
    if n > 1 or _SKIP_ANALYSIS.value:
      return
  ablation_report.analyze(config, workdir, points)


if __name__ == "__main__":
  cli.run(main)
