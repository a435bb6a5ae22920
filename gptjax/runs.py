"""A run's workdir: writing into it safely and loading what a finished stage left.

Every stage reads its upstream through `load_run` (config.json, tokenizer.model,
the latest checkpoint's params) and writes JSON results with `write_json`
(atomic: a crash never leaves half a file).
"""

import dataclasses
import json
import os

import ml_collections
import numpy as np

from gptjax import config as config_lib, model as model_lib, train
from gptjax.data import sources
from gptjax.tasks import world as world_lib
from gptjax.tokenizer import Tokenizer


def write_json(path: str, obj, **dump_kwargs) -> None:
  """Writes `obj` as JSON to `path` atomically (a temporary file, then a rename)."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict  # the run's config.json
  model: object
  params: object
  tokenizer: Tokenizer
  step: int
  workdir: str = ""


def load_run(workdir: str, step: int | None = None) -> LoadedRun:
  """Config, tokenizer and params of a pretrain or SFT workdir (latest checkpoint).

  Raises:
    FileNotFoundError: naming what is missing (config, tokenizer, checkpoint).
  """
  workdir = os.path.abspath(workdir)
  for name in ("config.json", "tokenizer.model"):
    if not os.path.exists(os.path.join(workdir, name)):
      raise FileNotFoundError(f"{workdir} has no {name}: is it a gptjax run's --workdir?")
  config = config_lib.load(os.path.join(workdir, "config.json"))
  model = model_lib.build(config)
  params, step = train.restore_params(
    workdir, config, model, {"tokens": np.zeros((1, config.model.max_len), np.int32)}, step
  )
  return LoadedRun(
    config, model, params, Tokenizer.load(os.path.join(workdir, "tokenizer.model")), step, workdir
  )


def world_of(config) -> world_lib.World:
  """The synthetic world a run was pretrained on (from its data section)."""
  w = sources.world_config(config)
  return world_lib.make_world(w["seed"], n_entities=w["n_entities"])
