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


def _init_fns(task: Task, tx, seed: int):
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
  boxed_init, _ = _init_fns(task, tx, seed)
  abstract = jax.eval_shape(boxed_init, jax.random.PRNGKey(seed))
  return sharding.logical_sharding(nn.get_partition_spec(abstract), mesh)


def create_state(task: Task, tx, mesh, seed: int):
  """A freshly initialised TrainState, laid out on `mesh`."""
  _, init = _init_fns(task, tx, seed)
  shardings = state_shardings(task, tx, mesh, seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed)), shardings


def abstract_state(task: Task, tx, mesh, seed: int = 0):
  """ShapeDtypeStructs with shardings: the target that a checkpoint restores into."""
  _, init = _init_fns(task, tx, seed)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(seed))
  shardings = state_shardings(task, tx, mesh, seed)
  return jax.tree_util.tree_map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
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
  """
  t = config.train
  workdir = prepare_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  sharding.check_divisible(t.batch_size, mesh)
  if t.batch_size % (t.grad_accum * mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ValueError(
      f"config.train.batch_size={t.batch_size} must be divisible by "
      f"grad_accum x data x fsdp = {t.grad_accum} x "
      f"{mesh.shape['data'] * mesh.shape['fsdp']}"
    )
  tx = make_optimizer(t)
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints
  )

  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(abstract_state(task, tx, mesh, config.seed))
    shardings = state_shardings(task, tx, mesh, config.seed)
    log(f"[{task.name}] resumed from {checkpointer.directory} at step {int(state.step)}")
  else:
    state, shardings = create_state(task, tx, mesh, config.seed)
    n = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    log(f"[{task.name}] new run: {n:,} parameters, mesh {dict(mesh.shape)}")

  batch_shard = lambda b: sharding.shard_batch(b, mesh)
  step_fn = jax.jit(
    functools.partial(train_step, loss_fn=task.loss_fn, tx=tx, grad_accum=t.grad_accum),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )
  eval_fn = jax.jit(functools.partial(eval_step, loss_fn=task.loss_fn))

  writer = metrics_lib.MetricsWriter(workdir)
  # The MFU denominator. On a shared machine one measurement can catch the
  # CPU busy and understate the peak (MFU above 100%), so it is measured again
  # at every evaluation and the largest value is kept.
  measure_peak = lambda: metrics_lib.measure_matmul_peak(
    state_dtype(state), devices=mesh.devices.flat
  )
  peak = measure_peak() if t.get("measure_peak", True) else None
  progress = metrics_lib.Progress(
    t.steps, int(state.step), task.tokens_per_step, task_flops_per_token(task, state.params), peak
  )
  summary: dict = {"peak_flops": peak}
  step = int(state.step)
  last_good = step

  def save(s):
    checkpointer.save(s, state, {"data_position": s})

  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      while step < t.steps:
        state, m = step_fn(state, batch_shard(task.train_batch(step)))
        step += 1
        is_last = step == t.steps
        if step % t.log_every == 0 or step % t.ckpt_every == 0 or is_last:
          m = _check_finite(jax.device_get(m), step, checkpointer.directory, last_good)
          if step % t.log_every == 0 or is_last:
            rates = progress.rates(step)
            m.update(rates, lr=float(learning_rate_schedule(t)(step - 1)))
            writer.write(step, "train", **m)
            log(f"[{task.name}] " + metrics_lib.Progress.line(step, t.steps, m["loss"], rates))
            summary["last_train"] = m
        if (step % t.eval_every == 0 or is_last) and task.eval_sets:
          if progress.peak and not is_last:
            progress.peak = summary["peak_flops"] = max(progress.peak, measure_peak())
          summary["last_eval"] = evaluate(eval_fn, state.params, task, batch_shard)
          if task.on_eval is not None:
            summary["last_eval"].update(task.on_eval(state.params, step) or {})
          writer.write(step, "eval", **summary["last_eval"])
          log(
            f"[{task.name}] eval @ {step}: "
            + "  ".join(
              f"{k} {v:.4f}" for k, v in summary["last_eval"].items() if isinstance(v, float)
            )
          )
          progress.rates(step)  # restart the clock: tokens/s and MFU count training only
        if step % t.ckpt_every == 0 or is_last:
          save(step)
          last_good = step
  except KeyboardInterrupt:
    # `state` is the result of the last completed step: consistent and safe to save.
    if step > last_good and params_finite(state.params):
      log(f"[{task.name}] interrupted at step {step}: saving a checkpoint before exiting ...")
      save(step)
      last_good = step
    log(
      f"[{task.name}] interrupted; checkpoint step {last_good} in {checkpointer.directory}. "
      "Rerun the same command to resume."
    )
    raise
  finally:
    # Also on errors (a NaN loss, say): finish any asynchronous save in flight,
    # so the "last good checkpoint" an error message names is complete on disk.
    checkpointer.close()
    writer.close()
  summary["steps"] = step
  return state, summary


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


def _check_finite(m: dict, step: int, ckpt_dir: str, last_good: int) -> dict:
  m = {k: float(np.asarray(v)) for k, v in m.items()}
  bad = [k for k in ("loss", "grad_norm") if k in m and not math.isfinite(m[k])]
  if bad:
    raise NonFiniteLossError(
      f"Non-finite {' and '.join(bad)} at step {step} ({', '.join(f'{k}={m[k]}' for k in bad)}). "
      f"The run stopped without saving; the last good checkpoint is step {last_good} in "
      f"{ckpt_dir}. Lower config.train.lr or check the data."
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

  A checkpoint holds the whole TrainState, so the optimizer's structure is
  rebuilt from the run's own `config.train` to restore into; only the params
  are returned (with the step). Raises FileNotFoundError / CheckpointError
  naming the directory.
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
    state, _ = checkpointer.restore(abstract_state(shell, tx, mesh, config.seed), step)
  finally:
    checkpointer.close()
  return state.params, int(state.step)
