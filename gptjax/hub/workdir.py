"""A converted model as a gptjax run, and any gptjax run as a model in memory.

A converted workdir is an LM run like an SFT run or RLHF's exported policy,
so `runs.load_run`, chat, evaluation and a later `--pretrained` stage read it:

  config.json     a resolved run config: `model` (with the family's switches),
                  `train` and `mesh` (which `train.restore_params` rebuilds the
                  checkpoint's structure from), `seed`, `preset` 'converted',
                  `data` (nothing gptjax knows was read in pretraining: an
                  empty mixture, and the default synthetic world, which SFT
                  builds its demonstrations from) and `converted_from` (the
                  source file, its format and quantization)
  checkpoints/0/  a TrainState written by gptjax.checkpoint.Checkpointer (with
                  its integrity checksums): the params, a fresh optimizer state
                  and step 0
  tokenizer       tokenizer.json + tokenizer_config.json (a released model's
                  BPE and chat template) or tokenizer.model (gptjax's own)

It is written into a temporary sibling directory and renamed when complete,
so an interrupted conversion leaves nothing that looks like a run.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import (
  chat as chat_lib,
  checkpoint as ckpt_lib,
  config as config_lib,
  model as model_lib,
  runs,
  train,
)
from gptjax.hub import families

PRESET = "converted"

# The optimizer of a converted run: what a fine-tuning stage that starts from it
# states for itself; only its structure matters here (the checkpoint's state).
TRAIN = {
  "steps": 1,
  "batch_size": 1,
  "grad_accum": 1,
  "lr": 1e-4,
  "min_lr_ratio": 0.1,
  "warmup_steps": 0,
  "weight_decay": 0.0,
  "b1": 0.9,
  "b2": 0.95,
  "clip_norm": 1.0,
  "log_every": 1,
  "eval_every": 1,
  "eval_batches": 1,
  "ckpt_every": 1,
  "keep_checkpoints": 1,
  "measure_peak": False,
}
MESH = {"data": -1, "fsdp": 1, "tensor": 1, "num_devices": -1}
DATA = {"mixture": {}, "world_seed": 0, "world_entities": 240, "world_passes": 1}


def is_run(path: str) -> bool:
  """A gptjax run: config.json with a `model` section, and a checkpoints/ directory."""
  config = os.path.join(path, "config.json")
  if not (os.path.isfile(config) and os.path.isdir(os.path.join(path, "checkpoints"))):
    return False
  try:
    return isinstance(config_lib.load(config).get("model"), ml_collections.ConfigDict)
  except (OSError, ValueError):
    return False


def run_config(m: families.Model) -> ml_collections.ConfigDict:
  """The resolved config.json of a converted model (see the module docstring)."""
  info = {k: v for k, v in m.info.items() if v not in (None, "", {})}
  return ml_collections.ConfigDict(
    {
      "preset": PRESET,
      "seed": 0,
      "model": dict(m.model),
      "data": dict(DATA),
      "train": dict(TRAIN),
      "mesh": dict(MESH),
      "converted_from": info,
    }
  )


def write(m: families.Model, workdir: str) -> list[str]:
  """Writes `m` as a gptjax run in `workdir` (new or empty); returns its files."""
  with runs.new_directory(workdir) as tmp:
    config = run_config(m)
    config_lib.save(config, tmp)
    m.tokenizer.save_to(tmp)
    _save_checkpoint(config, m.params, os.path.join(tmp, "checkpoints"), m.info)
  return sorted(os.listdir(workdir))


def _save_checkpoint(config, params, directory: str, info: dict) -> None:
  """Step 0 of a TrainState holding `params` (in config.model.param_dtype), through the
  project's Checkpointer."""
  dtype = model_lib.DTYPES[config.model.param_dtype]
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
  tx = train.make_optimizer(config.train)
  state = train.TrainState(
    step=jnp.array(0, jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(config.seed),
  )
  checkpointer = ckpt_lib.Checkpointer(directory, keep=1, async_save=False)
  try:
    checkpointer.save(0, state, {"converted_from": info})
  finally:
    checkpointer.close()


def read(workdir: str) -> families.Model:
  """A gptjax run's latest checkpoint as a model in memory (params as numpy float32);
  for an RLHF workdir, its exported policy (as chat reads it)."""
  run = chat_lib.load(workdir)
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(run.params))
  info = {"format": "gptjax", "source": run.workdir, "step": run.step}
  info["name"] = run.config.get("converted_from", {}).get("name", os.path.basename(run.workdir))
  return families.Model(run.config.model.to_dict(), params, run.tokenizer, info)
