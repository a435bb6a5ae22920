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
push one out, and is deleted once a later periodic one exists.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

FALLBACK_ENV = "GPTJAX_CHECKPOINT_FALLBACK"


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupted or incompatible)."""


class NonFiniteStateError(FloatingPointError):
  """The state to save holds NaN or Inf."""


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


_summaries = jax.jit(lambda leaves: [_leaf_summary(x) for x in leaves])


def summarize(state) -> tuple[dict[str, list[int]], list[str]]:
  """({array path: checksum}, [paths of arrays holding NaN/Inf]) of a state pytree."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  names = [jax.tree_util.keystr(path) for path, _ in flat]
  out = jax.device_get(_summaries([x for _, x in flat]))
  sums = {n: [int(v) for v in np.asarray(c)] for n, (c, _) in zip(names, out)}
  return sums, [n for n, (_, f) in zip(names, out) if not bool(f)]


class Checkpointer:
  """Thin wrapper around `ocp.CheckpointManager` with the policy gptjax uses."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True, every: int = 1):
    self.directory = os.path.abspath(directory)
    self.keep, self.every = keep, every
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
    Raises NonFiniteStateError (saving nothing) if an array holds NaN or Inf.
    """
    sums, bad = summarize(state)
    if bad:
      raise NonFiniteStateError(f"non-finite values in {', '.join(bad[:4])}")
    self._prune(int(step), periodic)
    self._manager.save(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(dict(meta or {}, step=int(step), checksums=sums)),
      ),
    )

  def _prune(self, new: int, periodic: bool) -> None:
    """Keeps the newest `keep` periodic checkpoints (counting `new`) and any
    off-schedule one newer than the newest periodic one."""
    self._manager.wait_until_finished()
    steps = [s for s in self._manager.all_steps() if s != new]
    regular = sorted([s for s in steps if s % self.every == 0] + ([new] if periodic else []))
    keep = set(regular[-self.keep :]) | {s for s in steps if s > max(regular, default=-1)}
    for s in steps:
      if s not in keep:
        self._manager.delete(s)

  def restore(self, abstract_state, step: int | None = None, fallback: bool = False, log=None):
    """Restores (state, meta) at `step` (default: latest) into `abstract_state`'s
    shapes, dtypes and shardings, and verifies the arrays' checksums.

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
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
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
      bad = [n for n, c in meta["checksums"].items() if sums.get(n) != c]
      if bad:
        raise CheckpointError(
          f"Checkpoint {path} is corrupted: {len(bad)} array(s) differ from the checksums "
          f"saved with them ({', '.join(bad[:3])}), so files under {path}/state changed "
          f"after saving. {hint}"
        )
    return restored.state, meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for saves in flight and releases the manager; safe to call twice."""
    if self._manager is None:
      return
    self._manager.wait_until_finished()
    self._manager.close()
    self._manager = None


def _check_same_structure(expected, got, path: str) -> None:
  shapes = lambda t: jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), t)
  if shapes(expected) != shapes(got):
    raise CheckpointError(
      f"Checkpoint {path} does not match the model's shapes; "
      "was it written with a different config?"
    )
