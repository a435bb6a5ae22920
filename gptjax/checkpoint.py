"""Orbax checkpoints: atomic, asynchronous, keep-last-N, auto-resume.

A checkpoint holds two items:
  state  the train state pytree (params, optimizer state, step, PRNG key)
  meta   JSON: the data position and anything else a run needs to resume
         (for the index-based iterator the position is the step itself).

Orbax writes into a temporary directory and renames it when complete, so a
crash mid-save leaves the previous checkpoint intact; a directory that is
present but unreadable is reported with its path, never silently skipped.
"""

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupted or incompatible)."""


class Checkpointer:
  """Thin wrapper around `ocp.CheckpointManager` with the policy gptjax uses."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
      ),
      item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict | None = None) -> None:
    """Starts saving `state` at `step` (asynchronous; `wait()` to block)."""
    self._manager.save(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}, step=int(step)))
      ),
    )

  def restore(self, abstract_state, step: int | None = None):
    """Restores (state, meta) at `step` (default: latest) into `abstract_state`'s
    shapes, dtypes and shardings. Raises CheckpointError naming the directory."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}")
    path = os.path.join(self.directory, str(step))
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # Orbax raises many types; all mean the same to a user.
      raise CheckpointError(
        f"Checkpoint {path} is corrupted or incompatible with this config "
        f"({type(e).__name__}: {str(e)[:300]}). Delete it or use another --workdir."
      ) from e
    _check_same_structure(abstract_state, restored.state, path)
    return restored.state, dict(restored.meta)

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
