"""A run's workdir: the stage scaffold, writing into it safely, and loading what a
finished stage left.

Every stage starts with `prepare_stage` (validate, join a multi-host job,
resolve the config against its upstream runs, create and lock the workdir,
refuse a changed config, save config.json, copy the tokenizer), reads its
upstream through `load_run` (config.json, the tokenizer's files, the latest
checkpoint's params) and writes JSON results with `write_json` (atomic: a
crash never leaves half a file). The tokenizer is gptjax's sentencepiece
(tokenizer.model) or, for a model converted by `gptjax.hub`, a released
model's BPE (tokenizer.json + tokenizer_config.json); `gptjax.tokenizer`
reads and copies either.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import socket
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from gptjax import (
  config as config_lib,
  files,
  model as model_lib,
  sharding,
  tokenizer as tokenizer_lib,
  train,
)
from gptjax.data import sources
from gptjax.tasks import instructions, world as world_lib


def write_json(path: str, obj, **dump_kwargs) -> None:
  """Writes `obj` as JSON to `path` atomically (a temporary file, then a rename)."""
  files.write_text(path, json.dumps(obj, **{"indent": 2, "sort_keys": True, **dump_kwargs}))


@contextlib.contextmanager
def new_directory(directory: str):
  """Yields a temporary sibling of `directory` (which must be new or empty) to
  write into; renames it to `directory` when the block completes, and deletes
  it if the block raises, so an interrupted writer leaves nothing that looks
  complete.

  Raises:
    FileExistsError: if `directory` exists and is not an empty directory.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise FileExistsError(
      f"{directory} exists and is not empty: choose a new destination or delete it"
    )
  tmp = f"{directory}.converting-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.isdir(directory):
      os.rmdir(directory)  # empty (checked above)
    os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# ----------------------------------------------------------------------------
# The stage scaffold

LOCK_FILE = "lock.json"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, another user's
  return True


class WorkdirLock:
  """`workdir/lock.json` names the process (pid, host) that writes into a workdir.

  Created with O_EXCL, so two processes cannot both take it. A lock left by a
  dead process on this host (a crash, a kill -9) is taken over; one held by a
  live process, or by a process on another host (which cannot be checked), is
  a FileExistsError naming it. The same process may take it again (the
  pipeline runs stages one after another in one process).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.me = {"pid": os.getpid(), "host": socket.gethostname()}
    self.held = False

  def acquire(self) -> "WorkdirLock":
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        if self._stale():  # its process is gone (else _stale raises)
          os.remove(self.path)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self.me, f)
      self.held = True
      return self
    raise FileExistsError(f"Could not lock {self.path}; retry.")

  def _stale(self) -> bool:
    """True if the existing lock may be taken over; raises if a live process holds it."""
    try:
      with open(self.path) as f:
        other = json.load(f)
    except (OSError, ValueError):
      return True  # half-written by a process killed while writing it
    if other == self.me:
      return True
    pid, host = other.get("pid"), other.get("host")
    if host == self.me["host"] and not _alive(int(pid)):
      return True
    raise FileExistsError(
      f"{os.path.dirname(self.path)} is in use by pid {pid} on {host} ({self.path}). "
      "Wait for that run to finish or stop it; if no such process runs any more, "
      f"delete {self.path}."
    )

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass


@dataclasses.dataclass
class Stage:
  """A prepared, locked workdir and the resolved config saved in it.

  A context manager: leaving it releases the workdir's lock."""

  config: ml_collections.ConfigDict
  workdir: str
  upstream: Any
  lock: WorkdirLock

  def __enter__(self) -> "Stage":
    return self

  def __exit__(self, *exc) -> None:
    self.lock.release()


def prepare_stage(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  validate: Callable[[ml_collections.ConfigDict], None],
  resolve: Callable[[ml_collections.ConfigDict], tuple] | None = None,
  tokenizer_from: str | None = None,
  log: Callable[[str], None] = print,
) -> Stage:
  """The start every stage shares, in this order:

  validate(config) (fails in the first second, naming the field) -> join a
  multi-host job (before any JAX computation, such as loading an upstream run)
  -> resolve(config) -> (resolved config, upstream objects the stage needs;
  e.g. SFT adds the pretrained run's model section) -> create the workdir and
  check it is writable -> lock it -> refuse a config that differs from the
  one saved by an earlier run in it (except config.SAFE_TO_CHANGE) -> save
  config.json -> copy the tokenizer's files from `tokenizer_from` (the upstream run).

  Use as `with prepare_stage(...) as stage:` so the lock is released.
  """
  validate(config)
  sharding.maybe_initialize_distributed()
  upstream = None
  if resolve is not None:
    config, upstream = resolve(config)
  workdir = train.prepare_workdir(workdir)
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:  # in a multi-host job the other processes share its lock
    lock.acquire()
  try:
    config_lib.check_unchanged(config, workdir)
    config_lib.save(config, workdir)
    if tokenizer_from is not None:
      tokenizer_lib.copy_files(tokenizer_from, workdir)
  except BaseException:
    lock.release()
    raise
  return Stage(config, workdir, upstream, lock)


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict  # the run's config.json
  model: object
  params: object
  tokenizer: tokenizer_lib.ChatTokenizer
  step: int
  workdir: str = ""


def load_run(workdir: str, step: int | None = None) -> LoadedRun:
  """Config, tokenizer and params of a pretrain, SFT or converted workdir (latest checkpoint).

  Raises:
    FileNotFoundError: naming what is missing (config, tokenizer, checkpoint).
  """
  workdir = os.path.abspath(workdir)
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"{workdir} has no config.json: is it a gptjax run's --workdir?")
  if not tokenizer_lib.files_in(workdir):
    tokenizer_lib.load_from(workdir)  # raises, naming both tokenizer files
  config = config_lib.load(os.path.join(workdir, "config.json"))
  model = model_lib.build(config)
  params, step = train.restore_params(
    workdir, config, model, {"tokens": np.zeros((1, config.model.max_len), np.int32)}, step
  )
  return LoadedRun(config, model, params, tokenizer_lib.load_from(workdir), step, workdir)


def families_of(config) -> tuple[str, ...]:
  """The task families a run's demonstrations, comparisons, rollouts and
  evaluations use: config.sft.families of an SFT run (and of every stage
  after it, whose config is the SFT run's), or every family when absent or
  empty (a pretraining run, or an SFT run that names none).

  Raises:
    ValueError: naming an unknown family and the known ones.
  """
  sft_section = config.get("sft")
  names = (
    tuple(sft_section.get("families", ()))
    if isinstance(sft_section, ml_collections.ConfigDict)
    else ()
  )
  unknown = [f for f in names if f not in instructions.FAMILIES]
  if unknown:
    raise ValueError(
      f"sft.families: unknown task famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; "
      f"the families are {', '.join(instructions.FAMILIES)}"
    )
  return names or instructions.FAMILIES


def world_of(config) -> world_lib.World:
  """The synthetic world a run was pretrained on (from its data section)."""
  w = sources.world_config(config)
  return world_lib.make_world(w["seed"], n_entities=w["n_entities"])
