"""Scaling-law sweep: a grid of pretraining runs, power-law fits, IsoFLOP frontier, emergence.

Run (tiny: a few minutes on a 2-core CPU; small: about two hours):
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:tiny \
      --workdir=/tmp/sweep_tiny
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:small \
      --workdir=runs/sweep_small --dry_run         # the grid and each point's command
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:small \
      --workdir=runs/sweep_small --shard=2/8       # points 2, 10, 18, ... (e.g. a Slurm array)
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:small \
      --workdir=runs/sweep_small --analyze_only    # after all shards finished

Each point is an ordinary pretraining run in <workdir>/points/<name>/. Rerunning
the same command skips finished points (done.json) and resumes interrupted ones;
failed points leave error.txt and are listed at the end. Afterwards (unless
--shard splits the grid or --skip_analysis) it writes results.csv, fits.json,
PNG plots and report.md into --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import scaling_sweep as sweep_configs
from gptjax import cli
from gptjax.scaling import grid, sweep

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/scaling_sweep.py:tiny", "Sweep config and preset."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep", "Where the points and results go.")
_CACHE_DIR = flags.DEFINE_string(
  "cache_dir", None, "Prepared datasets and token streams (default ~/.cache/gptjax)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each point's command; run nothing.")
_SHARD = flags.DEFINE_string("shard", "0/1", "'i/n': run points i, i+n, i+2n, ...")
_ANALYZE_ONLY = flags.DEFINE_bool("analyze_only", False, "Only write results, fits, plots.")
_SKIP_ANALYSIS = flags.DEFINE_bool("skip_analysis", False, "Run points without analysing.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = cli.checked(_CONFIG.value, sweep_configs.get_config)
  workdir = _WORKDIR.value
  i, n = grid.parse_shard(_SHARD.value)
  if _DRY_RUN.value:
    points = sweep.make_points(config)
    for p in grid.shard(points, i, n):
      print(
        f"# {p.index:3d} {p.name}: N={p.N:,} (all {p.n_params:,}) D={p.tokens:,} "
        f"C={p.flops:.3g}\n{grid.point_command(p, config.base_preset, workdir)}"
      )
    return
  if not _ANALYZE_ONLY.value:
    status = sweep.run_sweep(config, workdir, _CACHE_DIR.value, (i, n))
    print(
      f"done: ran {len(status['ran'])}, skipped {len(status['skipped'])} finished, "
      f"failed {len(status['failed'])}"
    )
    for f in status["failed"]:
      print(f"  FAILED {f['name']}: {f['error']}  ({f['traceback']})")
    if n > 1 or _SKIP_ANALYSIS.value:
      return
  sweep.analyze(config, workdir)


if __name__ == "__main__":
  cli.run(main)
