"""The one train loop, shared by pretraining, SFT and reward-model training.

An experiment describes *what* to train as a `Task` (model, loss, data);
`run` does the rest: mesh, sharded state, optimizer, jitted step, periodic
evaluation, metrics, checkpoints and exact resume.

Exact resume rests on three facts: the batch of step s is a pure function of
(seed, s); the step's PRNG key is fold_in(state.rng, s); and the checkpoint
holds params, optimizer state, step and key. A resumed run therefore replays
precisely what an uninterrupted run would have done.
"""

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from gptjax import checkpoint as ckpt_lib, metrics as metrics_lib, model as model_lib, sharding


@struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # base PRNG key; step s uses fold_in(rng, s)


@dataclasses.dataclass
class Task:
  """What to train. Batches are host numpy dicts of the *global* batch.

  loss_fn(params, batch, rng, train) -> (total, weight, metric_totals)
  init_params(rng) -> params (unboxed); default: model.init on `example_batch`.
  eval_sets: name -> zero-arg callable yielding evaluation batches.
  on_eval(params, step) -> dict of extra scalars to log (e.g. samples printed).
  done(evals) -> bool, asked after each evaluation with every evaluation so far
  ([{'step': s, name: value, ...}], oldest first): True ends training at that
  step, before train.steps (early stopping). The checkpoint saved there says
  so, and a rerun of a finished run trains no further.
  """

  name: str
  model: nn.Module
  loss_fn: Callable
  train_batch: Callable[[int], dict]
  example_batch: dict
  tokens_per_step: int
  flops_per_token: float | None = None  # None: computed from the model (see below)
  eval_sets: dict[str, Callable[[], Iterable[dict]]] = dataclasses.field(default_factory=dict)
  init_params: Callable | None = None
  on_eval: Callable | None = None
  # local_batch(step, rows) -> rows `rows` (ascending indices into the global batch) of
  # batch `step`. With it, each process of a multi-process run builds only its own rows
  # (sharding.process_rows); without, each builds train_batch(step) and keeps its rows.
  local_batch: Callable[[int, np.ndarray], dict] | None = None
  done: Callable[[list[dict]], bool] | None = None


class NonFiniteLossError(FloatingPointError):
  pass


# ----------------------------------------------------------------------------
# Optimizer


def learning_rate_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to lr * min_lr_ratio at `steps`."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=t.lr,
    warmup_steps=t.warmup_steps,
    decay_steps=max(t.steps, t.warmup_steps + 1),
    end_value=t.lr * t.min_lr_ratio,
  )


def decays(path, x) -> bool:
  """Weight decay applies to matrices and embeddings, never to biases or LayerNorms."""
  name = str(getattr(path[-1], "key", path[-1]))
  return x.ndim >= 2 and not name.startswith("b_") and name not in ("bias", "scale")


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; no weight decay on biases and LayerNorms."""
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(decays, params)
  return optax.chain(
    optax.clip_by_global_norm(t.clip_norm),
    optax.adamw(
      learning_rate_schedule(t), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask
    ),
  )


# ----------------------------------------------------------------------------
# Steps (module level, jitted once in `run`)


def _split_microbatches(batch: dict, n: int) -> dict:
  return jax.tree_util.tree_map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  loss_fn: Callable,
  tx: optax.GradientTransformation,
  grad_accum: int = 1,
):
  """One optimizer step over `grad_accum` micro-batches. Returns (state, metrics)."""
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(lambda p, b, r: _totals(loss_fn(p, b, r, True)), has_aux=True)

  if grad_accum == 1:
    (total, (weight, extra)), grads = grad_fn(state.params, batch, rng)
  else:

    def accumulate(carry, xs):
      mb, i = xs
      (t, (w, e)), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
      return jax.tree_util.tree_map(jnp.add, carry, (g, t, w, e)), None

    micro = _split_microbatches(batch, grad_accum)  # [A, B/A, ...]
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    (t0, (w0, e0)), g0 = jax.eval_shape(grad_fn, state.params, first, rng)
    carry = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (g0, t0, w0, e0))
    (grads, total, weight, extra), _ = jax.lax.scan(
      accumulate, carry, (micro, jnp.arange(grad_accum))
    )

  weight = jnp.maximum(weight, 1e-9)
  grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": total / weight, "grad_norm": optax.tree.norm(grads)}
  metrics.update({k: v / weight for k, v in extra.items()})
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _totals(out):
  total, weight, extra = out
  return total, (weight, extra)


def eval_step(params, batch: dict, *, loss_fn: Callable):
  """Returns (total, weight, metric_totals) for one evaluation batch."""
  return loss_fn(params, batch, jax.random.PRNGKey(0), False)


# ----------------------------------------------------------------------------
# State creation with shardings


def _init_fns(task: Task, tx):
  """(boxed_init, init): boxed keeps logical axis names for computing shardings."""

  def boxed_init(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = task.model.init(params_rng, **_model_inputs(task.example_batch))["params"]
    return TrainState(
      step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng
    )

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    if task.init_params is not None:
      params = task.init_params(params_rng)
    else:
      params = nn.meta.unbox(
        task.model.init(params_rng, **_model_inputs(task.example_batch))["params"]
      )
    return TrainState(
      step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng
    )

  return boxed_init, init


def _model_inputs(batch: dict) -> dict:
  return {"tokens": jnp.asarray(batch["tokens"][:1])}


def state_shardings(task: Task, tx, mesh, seed: int = 0):
  """NamedShardings for every leaf of the TrainState, from the logical names."""
  boxed_init, _ = _init_fns(task, tx)
  abstract = jax.eval_shape(boxed_init, jax.random.PRNGKey(seed))
  return sharding.logical_sharding(nn.get_partition_spec(abstract), mesh)


def create_state(task: Task, tx, mesh, seed: int):
  """A freshly initialised TrainState, laid out on `mesh`."""
  _, init = _init_fns(task, tx)
  shardings = state_shardings(task, tx, mesh, seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed)), shardings


def abstract_state(task: Task, tx, mesh, seed: int = 0):
  """ShapeDtypeStructs with shardings: the target that a checkpoint restores into."""
  _, init = _init_fns(task, tx)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(seed))
  shardings = state_shardings(task, tx, mesh, seed)
  return jax.tree_util.tree_map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


# ----------------------------------------------------------------------------
# Graceful stop: a flag set by a signal handler, checked between steps


class GracefulStop(KeyboardInterrupt):
  """A requested stop, raised between steps once the state is saved. Its message
  says which checkpoint a rerun resumes from (or that there is none)."""


_STOP: dict = {"reason": None}


def request_stop(reason: str = "stop requested") -> None:
  """Asks every resumable loop to save and stop after the step in progress.

  `cli.graceful_stop_signals` calls this from its SIGTERM/SIGINT handler. A flag,
  not an exception: an exception raised inside a jitted step that donates its
  state would leave `state` pointing at deleted buffers, and one raised inside
  XLA's compilation can crash the process."""
  _STOP["reason"] = reason


def stop_requested() -> str | None:
  return _STOP["reason"]


def clear_stop() -> None:
  _STOP["reason"] = None


def check_stop(name: str, where: str, workdir: str, unit: str = "step") -> None:
  """Raises GracefulStop if a stop was requested: for the points between a
  stage's phases (data preparation, evaluation) where there is nothing to save.
  The message names the checkpoint in workdir/checkpoints a rerun resumes from
  (`unit`: what a checkpoint counts, 'iteration' for RLHF)."""
  if not _STOP["reason"]:
    return
  directory = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  said = (
    f"resume from checkpoint {unit} {max(steps)} in {directory}"
    if steps
    else "there is no checkpoint yet"
  )
  raise GracefulStop(f"[{name}] {_STOP['reason']}: stopped {where}; {said}. Rerun to resume.")


class Resumable:
  """The protocol every resumable loop follows (`run` and the RLHF loop).

  - `restore`: the latest checkpoint, verified (with GPTJAX_CHECKPOINT_FALLBACK=1
    the newest one that verifies), or None for a fresh run; metrics.jsonl is cut
    back to the records at or before that step, since the loop replays the steps
    after it and writes their records again (a run killed after logging and
    before saving would otherwise leave them twice).
  - `run(start, total, body, snapshot)`: body(i) takes step i -> i+1; after it,
    a checkpoint every `every` steps and at `total`, and, if a stop was
    requested, a checkpoint and GracefulStop. A body that returns True ends
    the loop there, after a checkpoint (the run is finished early). A stop
    requested before step start+1 saves nothing new and says which checkpoint
    exists.
  - A non-finite state is never saved (NonFiniteLossError naming the last good
    checkpoint). Used as a context manager: the checkpointer (saves in flight
    finish) and the metrics writer are closed in any case.
  - `unit` names what the loop counts in its messages ('iteration' for RLHF).
  """

  def __init__(
    self, name: str, workdir: str, *, keep: int, every: int, log, tensorboard=True, unit="step"
  ):
    self.name, self.every, self.log, self.unit = name, every, log, unit
    self.checkpointer = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=keep, every=every
    )
    self.writer = metrics_lib.MetricsWriter(workdir, tensorboard=tensorboard)

  def __enter__(self) -> "Resumable":
    return self

  def __exit__(self, *exc) -> None:
    # Also on errors (a NaN loss, say): finish any asynchronous save in flight,
    # so the "last good checkpoint" an error message names is complete on disk.
    self.checkpointer.close()
    self.writer.close()

  def restore(self, abstract) -> tuple[Any, dict] | None:
    fallback = os.environ.get(ckpt_lib.FALLBACK_ENV) == "1"
    if self.checkpointer.latest_step() is None:
      self.writer.truncate(0)
      return None
    state, meta = self.checkpointer.restore(abstract, fallback=fallback, log=self.log)
    self.writer.truncate(int(meta["step"]))
    return state, meta

  def where(self) -> str:
    """Which checkpoint a rerun resumes from, for messages."""
    last = self.checkpointer.latest_step()
    if last is None:
      return f"there is no checkpoint yet in {self.checkpointer.directory}"
    return f"the last good checkpoint is {self.unit} {last} in {self.checkpointer.directory}"

  def save(self, step: int, state, meta: dict, periodic: bool = True) -> None:
    try:
      self.checkpointer.save(step, state, meta, periodic=periodic)
    except ckpt_lib.NonFiniteStateError as e:
      raise NonFiniteLossError(
        f"The state after {self.unit} {step} holds {e}: it was not saved and the run stopped; "
        f"{self.where()}. Lower config.train.lr or check the data."
      ) from None

  def run(self, start: int, total: int, body, snapshot, intact=None) -> int:
    """Steps start..total; returns the step reached. snapshot(step) -> (state, meta).
    intact(step): whether the state may be saved as `step` after a KeyboardInterrupt
    raised inside `body` (None: never; such a state may be half updated)."""
    step = start
    try:
      self._stop_if_requested(step, start, snapshot)
      while step < total:
        finished = body(step)
        step += 1
        if step % self.every == 0 or step == total or finished:
          self.save(step, *snapshot(step))
        if finished:
          break
        self._stop_if_requested(step, start, snapshot)
    except GracefulStop:
      raise
    except KeyboardInterrupt:
      if intact is not None and step != self.checkpointer.latest_step() and intact(step):
        self.log(
          f"[{self.name}] interrupted at {self.unit} {step}: saving a checkpoint before exiting ..."
        )
        self.save(step, *snapshot(step), periodic=False)
      self.log(f"[{self.name}] interrupted; {self.where()}. Rerun the same command to resume.")
      raise
    return step

  def _stop_if_requested(self, step: int, start: int, snapshot) -> None:
    reason = stop_requested()
    if not reason:
      return
    if step != start and step != self.checkpointer.latest_step():
      self.log(
        f"[{self.name}] {reason} at {self.unit} {step}: saving a checkpoint before exiting ..."
      )
      self.save(step, *snapshot(step), periodic=False)
    self.checkpointer.wait()
    where = self.where().replace("the last good checkpoint is", "resume from checkpoint")
    raise GracefulStop(
      f"[{self.name}] {reason}: stopped after {self.unit} {step}; {where}. "
      "Rerun the same command to resume."
    )


# ----------------------------------------------------------------------------
# The loop


def prepare_workdir(workdir: str) -> str:
  """Creates workdir and checks it is writable, with a message naming it."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
      f"Cannot write to workdir {workdir}: {e.strerror}. "
      "Choose another --workdir or fix its permissions."
    ) from e
  return workdir


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  task: Task,
  mesh=None,
  log: Callable[[str], None] = print,
) -> tuple[TrainState, dict]:
  """Trains `task` to config.train.steps, resuming from workdir if possible.

  Returns the final state and a summary {'last_train': ..., 'last_eval': ...}.
  A requested stop (`request_stop`) saves and raises GracefulStop.
  """
  t = config.train
  workdir = prepare_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  _check_batch_split(t, mesh)
  tx = make_optimizer(t)
  with Resumable(task.name, workdir, keep=t.keep_checkpoints, every=t.ckpt_every, log=log) as loop:
    restored = loop.restore(abstract_state(task, tx, mesh, config.seed))
    meta = {} if restored is None else restored[1]
    if restored is not None:
      state, shardings = restored[0], state_shardings(task, tx, mesh, config.seed)
      log(f"[{task.name}] resumed from {loop.checkpointer.directory} at step {int(state.step)}")
    else:
      state, shardings = create_state(task, tx, mesh, config.seed)
      n = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
      log(f"[{task.name}] new run: {n:,} parameters, mesh {dict(mesh.shape)}")
    training = _Training(config, task, tx, mesh, shardings, state, loop, log, meta)
    # A run that ended early (Task.done) stays ended: it trains no further.
    total = int(state.step) if training.finished else t.steps
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      step = loop.run(int(state.step), total, training.step, training.snapshot, training.intact)
  training.summary.update(steps=step, early_stopped=training.finished)
  return training.state, training.summary


def _check_batch_split(t, mesh) -> None:
  sharding.check_divisible(t.batch_size, mesh)
  if t.batch_size % (t.grad_accum * mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ValueError(
      f"config.train.batch_size={t.batch_size} must be divisible by "
      f"grad_accum x data x fsdp = {t.grad_accum} x "
      f"{mesh.shape['data'] * mesh.shape['fsdp']}"
    )


class _Training:
  """What `run` carries from step to step: the state, the jitted step and
  evaluation, the progress clock and the summary; `step` is the loop's body."""

  def __init__(
    self, config, task: Task, tx, mesh, shardings, state, loop: Resumable, log, meta: dict
  ):
    t = self.t = config.train
    self.task, self.state, self.loop, self.log = task, state, loop, log
    self.shard = lambda b: sharding.shard_batch(b, mesh)
    self.rows = sharding.process_rows(mesh, t.batch_size)  # this process's rows of a batch
    self.mesh = mesh
    self.step_fn = jax.jit(
      functools.partial(train_step, loss_fn=task.loss_fn, tx=tx, grad_accum=t.grad_accum),
      out_shardings=(shardings, None),
      donate_argnums=(0,),
    )
    self.eval_fn = jax.jit(functools.partial(eval_step, loss_fn=task.loss_fn))
    self.lr = learning_rate_schedule(t)
    # The MFU denominator. On a shared machine one measurement can catch the
    # CPU busy and understate the peak (MFU above 100%), so it is measured again
    # at every evaluation and the largest value is kept.
    self.measure_peak = lambda: metrics_lib.measure_matmul_peak(
      state_dtype(self.state), devices=mesh.devices.flat
    )
    peak = self.measure_peak() if t.get("measure_peak", True) else None
    fpt = task_flops_per_token(task, state.params)
    self.progress = metrics_lib.Progress(t.steps, int(state.step), task.tokens_per_step, fpt, peak)
    self.summary: dict = {"peak_flops": peak}
    # Task.done's view: the evaluations so far, carried through checkpoints
    self.evals: list[dict] = list(meta.get("evals", []))
    self.finished = bool(meta.get("finished", False))

  def snapshot(self, step: int) -> tuple[TrainState, dict]:
    meta = {"data_position": step}
    if self.task.done is not None:
      meta.update(evals=self.evals, finished=self.finished)
    return self.state, meta

  def intact(self, step: int) -> bool:
    """The state is whole (no donated buffer) and is the result of `step` steps."""
    leaves = jax.tree_util.tree_leaves(self.state)
    return not any(x.is_deleted() for x in leaves) and int(self.state.step) == step

  def batch(self, i: int) -> dict:
    """Batch i on the mesh; in a multi-process run this process reads only its rows."""
    if self.task.local_batch is None or len(self.rows) == self.t.batch_size:
      return self.shard(self.task.train_batch(i))
    local = self.task.local_batch(i, self.rows)
    return sharding.shard_batch(local, self.mesh, self.t.batch_size)

  def step(self, i: int) -> bool:
    """Step i -> i + 1 on batch i; logs, checks the loss, evaluates on schedule.
    Returns whether training is finished early (Task.done after an evaluation)."""
    t = self.t
    self.state, m = self.step_fn(self.state, self.batch(i))
    step, is_last = i + 1, i + 1 == t.steps
    if step % t.log_every == 0 or step % t.ckpt_every == 0 or is_last:
      m = _check_finite(jax.device_get(m), step, self.loop.where())
      if step % t.log_every == 0 or is_last:
        rates = self.progress.rates(step)
        m.update(rates, lr=float(self.lr(step - 1)))
        self.loop.writer.write(step, "train", **m)
        self.log(
          f"[{self.task.name}] " + metrics_lib.Progress.line(step, t.steps, m["loss"], rates)
        )
        self.summary["last_train"] = m
    if (step % t.eval_every == 0 or is_last) and self.task.eval_sets:
      self._evaluate(step, is_last)
    return self.finished

  def _evaluate(self, step: int, is_last: bool) -> None:
    if self.progress.peak and not is_last:
      self.progress.peak = self.summary["peak_flops"] = max(self.progress.peak, self.measure_peak())
    ev = evaluate(self.eval_fn, self.state.params, self.task, self.shard)
    if self.task.on_eval is not None:
      # Samples are drawn off the training mesh, on this process's first device:
      # the sampler's jitted loop cannot mix a one-device copy with the mesh's
      # devices ("incompatible devices" on any mesh of more than one device).
      # (The copy is gathered first, on the training mesh: gathering from several
      # processes inside the one-device mesh would mix the two.)
      params = sharding.local_copy(self.state.params)
      with sharding.local_mesh():
        ev.update(self.task.on_eval(params, step) or {})
    self.summary["last_eval"] = ev
    self.loop.writer.write(step, "eval", **ev)
    scalars = {k: v for k, v in ev.items() if isinstance(v, float)}
    self.log(
      f"[{self.task.name}] eval @ {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in scalars.items())
    )
    if self.task.done is not None:
      self.evals.append({"step": step, **scalars})
      self.finished = not is_last and bool(self.task.done(self.evals))
      if self.finished:
        self.log(f"[{self.task.name}] finished early at step {step} of {self.t.steps} (Task.done)")
    self.progress.rates(step)  # restart the clock: tokens/s and MFU count training only


def task_flops_per_token(task: Task, params) -> float:
  """Training FLOPs per token for MFU: the Task's own figure, else 6N + 12LdT.

  Any Transformer-trunk model (the LM, the reward/value heads) gets the PaLM
  count from its config and matmul parameters at the example batch's length;
  a model without a `TransformerConfig` gets 0 (no MFU is reported).
  """
  if task.flops_per_token is not None:
    return task.flops_per_token
  cfg = getattr(task.model, "cfg", None)
  if not isinstance(cfg, model_lib.TransformerConfig) or "trunk" not in params:
    return 0.0
  n = model_lib.matmul_params(
    params, tied_unembedding=isinstance(task.model, model_lib.Transformer)
  )
  return model_lib.flops_per_token(cfg, n, task.example_batch["tokens"].shape[-1])


def params_finite(params) -> bool:
  return all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(params))


def state_dtype(state: TrainState):
  return jax.tree_util.tree_leaves(state.params)[0].dtype


def evaluate(eval_fn, params, task: Task, shard: Callable) -> dict:
  """Mean loss (and perplexity, other metrics) per evaluation set."""
  out = {}
  for name, batches in task.eval_sets.items():
    total, weight, extra = 0.0, 0.0, {}
    for batch in batches():
      t_, w_, e_ = jax.device_get(eval_fn(params, shard(batch)))
      total, weight = total + float(t_), weight + float(w_)
      for k, v in e_.items():
        extra[k] = extra.get(k, 0.0) + float(v)
    if weight == 0:
      continue
    loss = total / weight
    out[f"{name}/loss"] = loss
    out[f"{name}/perplexity"] = math.exp(min(loss, 50.0))
    out.update({f"{name}/{k}": v / weight for k, v in extra.items()})
  return out


def _check_finite(m: dict, step: int, where: str) -> dict:
  """`m` as floats; NonFiniteLossError if the loss or gradient norm is NaN/Inf.
  where: the message naming the last good checkpoint (Resumable.where)."""
  m = {k: float(np.asarray(v)) for k, v in m.items()}
  bad = [k for k in ("loss", "grad_norm") if k in m and not math.isfinite(m[k])]
  if bad:
    raise NonFiniteLossError(
      f"Non-finite {' and '.join(bad)} at step {step} ({', '.join(f'{k}={m[k]}' for k in bad)}). "
      f"The run stopped without saving; {where}. Lower config.train.lr or check the data."
    )
  return m


def restore_params(
  workdir: str,
  config: ml_collections.ConfigDict,
  model: nn.Module,
  example_batch: dict,
  step: int | None = None,
):
  """Params of `model` from the latest (or `step`) checkpoint of a run's workdir.

  A checkpoint holds the whole TrainState; the optimizer's structure is
  rebuilt from the run's own `config.train` to name its arrays, which are
  not read (AdamW's two moments would triple the reads and the memory).
  Returns (params, step). Raises FileNotFoundError / CheckpointError naming
  the directory.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir) or not any(d.isdigit() for d in os.listdir(ckpt_dir)):
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}: train that stage first.")
  shell = Task(
    name="restore",
    model=model,
    loss_fn=None,
    train_batch=None,
    example_batch=example_batch,
    tokens_per_step=0,
  )
  tx = make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh)
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints)
  try:
    target = abstract_state(shell, tx, mesh, config.seed)
    target = target.replace(
      opt_state=jax.tree_util.tree_map(lambda _: ckpt_lib.SKIP, target.opt_state)
    )
    state, _ = checkpointer.restore(target, step)
  finally:
    checkpointer.close()
  return state.params, int(state.step)
