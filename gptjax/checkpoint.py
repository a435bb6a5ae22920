"""Orbax checkpoints: atomic, asynchronous, verified, keep-last-N, auto-resume.

A checkpoint holds two items:
  state  the train state pytree (params, optimizer state, step, PRNG key)
  meta   JSON: the data position and anything else a run needs to resume
         (for the index-based iterator the position is the step itself),
         plus a checksum of every array of `state`.

Orbax writes into a temporary directory and renames it when complete, so a
crash mid-save leaves the previous checkpoint intact; a directory that is
present but unreadable is reported with its path, never silently skipped.

Integrity. Orbax does not notice flipped bits in its data files: the arrays
load with other values. So each save stores, in `meta`, two wrapping uint32
sums per array (of its bit patterns, plain and position-weighted), computed
on the device: integer sums are exact in any order, so the checksum does not
depend on the mesh the state is laid out on. `restore` recomputes them and
refuses a checkpoint whose arrays differ, naming the checkpoint and arrays.
A non-finite state is never saved (it would be "the last good checkpoint").

Retention. `keep` counts the periodic checkpoints (every `every` steps and
the last); a checkpoint taken off that schedule (a graceful stop) does not
push one out, and is deleted once a later periodic one exists. Old ones are
deleted only once a newer one is complete on disk, so a save that fails (a
full disk, a crash) always leaves the previous checkpoint to resume from; a
save needs room for one checkpoint more than `keep`.

A full disk while saving is one DiskFullError (an OSError, ENOSPC) naming the
checkpoint that could not be written and the one a rerun resumes from. What
Orbax and TensorStore would print about it besides (a traceback per writer
thread, and per late write callback) is dropped: the error says it once.
"""

import contextlib
import errno
import logging
import os
import shutil
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

FALLBACK_ENV = "GPTJAX_CHECKPOINT_FALLBACK"
SKIP = ocp.PLACEHOLDER  # a leaf of a restore target that is not to be read


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupted or incompatible)."""


class NonFiniteStateError(FloatingPointError):
  """The state to save holds NaN or Inf."""


class DiskFullError(OSError):
  """A checkpoint could not be written for lack of space (errno ENOSPC or
  EDQUOT, filename the checkpoint's directory); strerror says which checkpoint
  a rerun resumes from."""

  def __str__(self) -> str:
    where = f"could not write {self.filename} ({self.strerror})"
    return f"The disk is full: {where}. Free space and rerun."


_NO_SPACE = {errno.ENOSPC: os.strerror(errno.ENOSPC), errno.EDQUOT: os.strerror(errno.EDQUOT)}


def disk_full(e: BaseException | None) -> int | None:
  """ENOSPC or EDQUOT if `e`, or an exception it was raised from, says the disk
  (or quota) is full; else None. (TensorStore reports it in a ValueError's text.)"""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
      return e.errno
    for code, text in _NO_SPACE.items():
      if text in str(e):
        return code
    e = e.__cause__ or e.__context__
  return None


class _DropOrbaxDiskFull(logging.Filter):
  """Orbax logs a failed save once per background thread, each with a
  traceback; for a full disk, DiskFullError says it once."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    said = record.getMessage()
    return disk_full(error) is None and not any(t in said for t in _NO_SPACE.values())


logging.getLogger("absl").addFilter(_DropOrbaxDiskFull())


def _as_uint32(x) -> jax.Array:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)


def _leaf_summary(x) -> tuple[jax.Array, jax.Array]:
  """(checksum [2] uint32, all finite [] bool) of one array."""
  u = _as_uint32(x).ravel()
  weights = jnp.arange(u.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
  checksum = jnp.stack([u.sum(dtype=jnp.uint32), (u * weights).sum(dtype=jnp.uint32)])
  finite = jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
  return checksum, finite


# One program per leaf, not one for the whole state: XLA:CPU materialises a
# leaf's weighted products before reducing them, and one program over every
# leaf held all of them at once (2.2x the state's bytes: 1.2 GB more to load
# SmolLM2-135M's params; per leaf, 2.2x the largest array). Each is waited
# for before the next starts: many sharded programs in flight at once can
# deadlock XLA:CPU's in-process all-reduce (seen on 8 host devices).
_summary = jax.jit(_leaf_summary)


def summarize(state) -> tuple[dict[str, list[int]], list[str]]:
  """({array path: checksum}, [paths of arrays holding NaN/Inf]) of a state pytree
  (leaves that are `SKIP` are left out)."""
  flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0] if x is not SKIP]
  names = [jax.tree_util.keystr(path) for path, _ in flat]
  out = [jax.device_get(_summary(x)) for _, x in flat]
  sums = {n: [int(v) for v in np.asarray(c)] for n, (c, _) in zip(names, out)}
  return sums, [n for n, (_, f) in zip(names, out) if not bool(f)]


class Checkpointer:
  """Thin wrapper around `ocp.CheckpointManager` with the policy gptjax uses."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True, every: int = 1):
    self.directory = os.path.abspath(directory)
    self.keep, self.every, self.async_save = keep, every, async_save
    self._periodic: set[int] = set()  # steps saved on schedule by this object
    self._saving: int | None = None  # the step of the save in flight
    self._last: int | None = None  # the step of the latest save
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save),
      item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict | None = None, periodic: bool = True) -> None:
    """Starts saving `state` at `step` (asynchronous; `wait()` to block).

    periodic: False for a checkpoint off the `every` schedule (a graceful stop).
    Raises NonFiniteStateError (saving nothing) if an array holds NaN or Inf,
    DiskFullError if this save (or the one before, still in flight) ran out of space.
    """
    sums, bad = summarize(state)
    if bad:
      raise NonFiniteStateError(f"non-finite values in {', '.join(bad[:4])}")
    self.wait()  # the previous save is complete: now older ones may go
    self._prune()
    _drop_late_write_callbacks()
    if periodic:
      self._periodic.add(int(step))
    with self._failing_for_space(int(step)):
      self._saving = self._last = int(step)
      self._manager.save(
        int(step),
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave(dict(meta or {}, step=int(step), checksums=sums)),
        ),
      )
    if not self.async_save:
      self.wait()

  @contextlib.contextmanager
  def _failing_for_space(self, step: int | None):
    """Turns a full disk while writing checkpoint `step` into one DiskFullError."""
    error = None
    try:
      yield
    except Exception as e:
      code = disk_full(e)
      if code is None:
        raise
      path = self.directory if step is None else os.path.join(self.directory, str(step))
      error = DiskFullError(code, self._space_message(code), path)
    if error is not None:
      self._saving = None
      raise error from None

  def _space_message(self, code: int) -> str:
    names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    done = [int(d) for d in names if d.isdigit()]  # complete on disk (Orbax renames when done)
    last = max(done, default=None)
    kept = (
      f"checkpoint step {last} in {self.directory} is intact and a rerun resumes from it"
      if last is not None
      else f"there is no earlier checkpoint in {self.directory}"
    )
    return f"{_NO_SPACE[code]}; {kept}"

  def _prune(self) -> None:
    """Keeps the newest `keep` periodic checkpoints and any off-schedule one
    newer than the newest periodic one. Called with no save in flight."""
    steps = self._manager.all_steps()
    regular = sorted(s for s in steps if s % self.every == 0 or s in self._periodic)
    keep = set(regular[-self.keep :]) | {s for s in steps if s > max(regular, default=-1)}
    for s in steps:
      if s not in keep:
        self._manager.delete(s)

  def restore(self, abstract_state, step: int | None = None, fallback: bool = False, log=None):
    """Restores (state, meta) at `step` (default: latest) into `abstract_state`'s
    shapes, dtypes and shardings, and verifies the arrays' checksums.

    A leaf of `abstract_state` that is `SKIP` is not read (it stays `SKIP` in
    the returned state): `train.restore_params` reads the params alone, not
    the optimizer's moments. The arrays that are read are verified.

    fallback: if the latest checkpoint does not restore, move it aside (to
    <directory>.corrupt/) and try the one before, and so on.
    Raises CheckpointError naming the checkpoint.
    """
    if step is not None or not fallback:
      return self._restore_one(abstract_state, step)
    while True:
      try:
        return self._restore_one(abstract_state, None)
      except CheckpointError as e:
        bad = self.latest_step()
        if bad is None or len(self._manager.all_steps()) < 2:
          raise
        aside = os.path.join(f"{self.directory}.corrupt", str(bad))
        if log:
          log(f"{e} Falling back: moving it to {aside}.")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        shutil.move(os.path.join(self.directory, str(bad)), aside)
        self._manager.reload()

  def _restore_one(self, abstract_state, step: int | None):
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}")
    path = os.path.join(self.directory, str(step))
    hint = (
      f"Delete it or use another --workdir; or set {FALLBACK_ENV}=1 to resume from the "
      "newest earlier checkpoint that restores."
    )
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=_restore_args(abstract_state), meta=ocp.args.JsonRestore()),
      )
    except Exception as e:  # Orbax raises many types; all mean the same to a user.
      detail = " ".join(f"{type(e).__name__}: {e}".split())[:300]
      raise CheckpointError(
        f"Checkpoint {path} is corrupted or incompatible with this config ({detail}). {hint}"
      ) from None
    _check_same_structure(abstract_state, restored.state, path)
    meta = dict(restored.meta)
    if "checksums" in meta:  # checkpoints written before checksums restore unverified
      sums, _ = summarize(restored.state)
      bad = [n for n, c in meta["checksums"].items() if n in sums and sums[n] != c]
      bad += [n for n in sums if n not in meta["checksums"]]
      if bad:
        raise CheckpointError(
          f"Checkpoint {path} is corrupted: {len(bad)} array(s) differ from the checksums "
          f"saved with them ({', '.join(bad[:3])}), so files under {path}/state changed "
          f"after saving. {hint}"
        )
    return restored.state, meta

  def wait(self) -> None:
    """Waits for the save in flight (DiskFullError if it ran out of space), then
    deletes the checkpoints it makes redundant."""
    if self._saving is None:
      return
    with self._failing_for_space(self._saving):
      self._manager.wait_until_finished()
    self._saving = None
    self._prune()

  def close(self) -> None:
    """Waits for saves in flight and releases the manager; safe to call twice."""
    if self._manager is None:
      return
    try:
      self.wait()
      with self._failing_for_space(self._last):
        self._manager.close()  # Orbax may report a failed write only here
    except Exception:  # (not a second Ctrl-C: that aborts at once)
      with contextlib.suppress(Exception):  # the failure just raised, again
        self._manager.close()
      _join_orbax_threads()
      raise
    finally:
      self._manager = None


def _drop_late_write_callbacks() -> None:
  """When a save fails, TensorStore finishes the save's other writes and calls
  back into their asyncio loop, which Orbax closed on the failure: each call is
  an unraisable 'Event loop is closed' RuntimeError, printed with a traceback
  around the one-line error. Once a process saves, those (and only those) are
  dropped. (Installed before the first save: the failure can come at any time.)"""
  previous = sys.unraisablehook
  if getattr(previous, "drops_late_write_callbacks", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_late_write_callbacks = True
  sys.unraisablehook = hook


def _join_orbax_threads(timeout: float = 120.0) -> None:
  """Waits for the writer threads of a failed save: Orbax reports the first
  error while the others run on, and a thread still running at interpreter
  shutdown fails again there, with a traceback after the one-line error."""
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax"):
      with contextlib.suppress(Exception):  # Orbax's join re-raises the thread's error
        thread.join(max(0.0, deadline - time.monotonic()))


def _restore_args(abstract_state):
  """Orbax's restore arguments for a target. StandardRestore refuses `SKIP`
  leaves; the PyTree handler underneath it (the same files) leaves them unread."""
  if not any(x is SKIP for x in jax.tree_util.tree_leaves(abstract_state)):
    return ocp.args.StandardRestore(abstract_state)
  return ocp.args.PyTreeRestore(
    item=abstract_state,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
  )


def _check_same_structure(expected, got, path: str) -> None:
  shapes = lambda t: jax.tree_util.tree_map(
    lambda x: x if x is SKIP else (tuple(x.shape), str(x.dtype)), t
  )
  if shapes(expected) != shapes(got):
    raise CheckpointError(
      f"Checkpoint {path} does not match the model's shapes; "
      "was it written with a different config?"
    )
