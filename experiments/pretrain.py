"""Pretrain a decoder-only Transformer on English prose + Python code.

Run (tiny: ~1 minute on a 2-core CPU; small: the one-hour CPU research run):
  python -m experiments.pretrain --config=configs/pretrain.py:tiny --workdir=runs/tiny
  python -m experiments.pretrain --config=configs/pretrain.py:small --workdir=runs/small \
      --config.train.steps=2000

Writes into --workdir: config.json, tokenizer.model, metrics.jsonl, tb/,
checkpoints/. Rerunning the same command resumes from the last checkpoint;
Ctrl-C saves one before exiting.

Will it fit? Memory per device for a config and mesh, before training (here
`base` on 8 devices, simulated on a CPU; on the accelerator itself drop the
two variables and --device_memory_gib):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
    python -m experiments.pretrain --config=configs/pretrain.py:base --print_memory \
      --config.train.grad_accum=16 --device_memory_gib=16

Multi-process (see the README's "Multi-host" section): the same command in
every process, with --coordinator_address/--num_processes/--process_id (or
GPTJAX_COORDINATOR/GPTJAX_NUM_PROCESSES/GPTJAX_PROCESS_ID, or nothing under
Slurm's srun and on a Cloud TPU pod slice with GPTJAX_DISTRIBUTED=1).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import pretrain as pretrain_configs
from gptjax import cli, memory, pretraining, sharding

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/pretrain.py:tiny", "Config file and preset, e.g. configs/pretrain.py:small."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/pretrain", "Where checkpoints and metrics go.")
_CACHE_DIR = flags.DEFINE_string(
  "cache_dir", None, "Prepared datasets and token streams (default ~/.cache/gptjax)."
)
_PRINT_MEMORY = flags.DEFINE_bool(
  "print_memory",
  False,
  "Print parameter, optimizer, gradient and activation memory per device for this config and "
  "mesh (from shapes, then from XLA's compiled step), and exit without training.",
)
_DEVICE_MEMORY_GIB = flags.DEFINE_float(
  "device_memory_gib",
  None,
  "With --print_memory: the memory of one target device, to compare against when planning on "
  "another machine (default: what the device reports; CPUs report nothing).",
)

sharding.define_flags()  # --coordinator_address, --num_processes, --process_id


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sharding.initialize_from_flags()  # before anything starts JAX's backend
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = cli.checked(_CONFIG.value, pretrain_configs.get_config)
  if _PRINT_MEMORY.value:
    print_memory(config)
    return
  _, summary, _, _ = pretraining.run(config, _WORKDIR.value, _CACHE_DIR.value)
  ev = summary.get("last_eval", {})
  print(
    f"done: {summary['steps']} steps; unigram entropy {summary['unigram_entropy']:.3f} nats; "
    + "  ".join(f"{k} {v:.3f}" for k, v in ev.items() if k.endswith("/loss"))
  )


def print_memory(config) -> None:
  """The memory plan of one training step on config.mesh, before allocating anything."""
  pretraining.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  plan = memory.plan(config, mesh)
  print(memory.table(plan), flush=True)
  print("compiling the train step for XLA's memory analysis ...", flush=True)
  plan.compiled = memory.compiled(config, mesh)
  gib = _DEVICE_MEMORY_GIB.value
  capacity = int(gib * memory.GIB) if gib else memory.device_capacity(mesh)
  print(memory.table(plan, capacity))


if __name__ == "__main__":
  cli.run(main)
