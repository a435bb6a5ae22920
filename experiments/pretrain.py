"""Pretrain a decoder-only Transformer on English prose + Python code.

Run (tiny: ~1 minute on a 2-core CPU; small: the one-hour CPU research run):
  python -m experiments.pretrain --config=configs/pretrain.py:tiny --workdir=runs/tiny
  python -m experiments.pretrain --config=configs/pretrain.py:small --workdir=runs/small \
      --config.train.steps=2000

Writes into --workdir: config.json, tokenizer.model, metrics.jsonl, tb/,
checkpoints/. Rerunning the same command resumes from the last checkpoint;
Ctrl-C saves one before exiting.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import pretrain as pretrain_configs
from gptjax import cli, pretraining

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/pretrain.py:tiny", "Config file and preset, e.g. configs/pretrain.py:small."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/pretrain", "Where checkpoints and metrics go.")
_CACHE_DIR = flags.DEFINE_string(
  "cache_dir", None, "Prepared datasets and token streams (default ~/.cache/gptjax)."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = cli.checked(_CONFIG.value, pretrain_configs.get_config)
  _, summary, _, _ = pretraining.run(config, _WORKDIR.value, _CACHE_DIR.value)
  ev = summary.get("last_eval", {})
  print(
    f"done: {summary['steps']} steps; unigram entropy {summary['unigram_entropy']:.3f} nats; "
    + "  ".join(f"{k} {v:.3f}" for k, v in ev.items() if k.endswith("/loss"))
  )


if __name__ == "__main__":
  cli.run(main)
