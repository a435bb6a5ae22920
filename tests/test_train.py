"""The train loop: sharded steps, gradient accumulation, exact resume, failure modes,
the learning-rate schedule and the weight-decay mask.

One tiny config serves every test (a 1-layer, d_model 16 Transformer on
8-token rows of a learnable toy sequence), and a persistent compilation cache
for this module (`jax_compilation_cache` in conftest) makes the repeated
`train.run` calls compile each distinct program once.
"""

import functools
import math
import os
import shutil
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import pretrain as pretrain_configs
from gptjax import (
  checkpoint as ckpt_lib,
  cli,
  config as config_lib,
  losses,
  metrics,
  model as model_lib,
  pretraining,
  sharding,
  train,
)

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")

B, T, V = 8, 8, 32  # global batch, sequence length, vocabulary
STEPS = 8


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
  c = pretrain_configs.get_config("tiny")
  c.model.update(vocab_size=V, max_len=T, n_layer=1, n_head=2, d_model=16, d_ff=32)
  # Warmup over all 2 x STEPS steps: the schedule's values, and so the compiled
  # step, do not depend on train.steps <= 2 x STEPS, so a finished run can be
  # extended exactly (with a cosine tail, extending a run changes its schedule).
  c.train.update(
    steps=STEPS,
    batch_size=B,
    grad_accum=1,
    lr=5e-2,
    min_lr_ratio=1.0,
    warmup_steps=2 * STEPS,
    log_every=1,
    eval_every=4,
    eval_batches=1,
    ckpt_every=100,
    keep_checkpoints=3,
  )
  c.train.update(train_overrides)
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.train.measure_peak = False  # read with .get(); no matmul benchmark in tests
  return c


def toy_batch(seed: int, step: int) -> dict:
  """Rows count upwards mod V from a random start: easy to learn, a pure function of step."""
  start = np.random.default_rng((seed, step)).integers(0, V, (B, 1))
  rows = ((start + np.arange(T + 1)) % V).astype(np.int32)  # [B, T+1]
  return {"tokens": rows[:, :-1], "targets": rows[:, 1:], "loss_mask": np.ones((B, T), np.float32)}


def make_task(config, train_batch=None) -> train.Task:
  model = model_lib.build(config)
  batch = functools.partial(toy_batch, config.seed)
  return train.Task(
    name="test",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=train_batch or batch,
    example_batch=batch(0),
    tokens_per_step=B * T,
    eval_sets={"toy": lambda: [batch(10_000)]},
  )


def mesh_of(shape, devices=None):
  cfg = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, shape)))
  devices = jax.devices()[: int(np.prod(shape))] if devices is None else devices
  return sharding.make_mesh(cfg, devices)


def host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def assert_trees_close(a, b, atol, what=""):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(
      x, y, atol=atol, rtol=0, err_msg=f"{what}{jax.tree_util.keystr(path)}"
    )


def assert_trees_equal(a, b, what=""):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=f"{what}{jax.tree_util.keystr(path)}")


# ----------------------------------------------------------------------------
# One step on different meshes; gradient accumulation


# The tests' own programs skip LLVM's optimisations: 3x faster to compile on a
# CPU, and the same computation on every mesh.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jitted_step(task, tx, shardings, grad_accum=1):
  """As `train.run` jits the step (there with default compiler options)."""
  return jax.jit(
    functools.partial(train.train_step, loss_fn=task.loss_fn, tx=tx, grad_accum=grad_accum),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
    compiler_options=FAST_COMPILE,
  )


def two_steps(task, tx, initial, mesh, grad_accum=1):
  """Lays `initial` (host arrays) out on `mesh` and takes two steps: (losses, params)."""
  shardings = train.state_shardings(task, tx, mesh)
  state = jax.device_put(initial, shardings)
  step = jitted_step(task, tx, shardings, grad_accum)
  metrics_ = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for s in range(2):  # step 0 has lr 0 (warmup starts at 0): step 1 moves the params
      state, m = step(state, sharding.shard_batch(task.train_batch(s), mesh))
      metrics_.extend([float(m["loss"]), float(m["grad_norm"])])
  return metrics_, host(state.params), state


@pytest.fixture(scope="module")
def step_kit():
  """(task, tx, initial state on the host, single-device two-step reference).

  The reference is ([loss, grad_norm] of both steps, final params, state)."""
  config = tiny_config()
  task = make_task(config)
  # Step 1 at the full lr. A small lr: Adam divides by |g| + eps, which turns the
  # rounding noise of exactly-zero gradients (the key bias: softmax ignores a
  # shift shared by all keys) into updates of up to ~lr / 10 that differ between
  # reduction orders; at lr 2e-3 they stay well below the 1e-5 tolerance.
  tx = train.make_optimizer(tiny_config(warmup_steps=1, lr=2e-3).train)
  state, _ = train.create_state(task, tx, mesh_of((2, 2, 2)), config.seed)
  initial = host(state)
  reference = two_steps(task, tx, initial, mesh_of((1, 1, 1)))
  return task, tx, initial, reference


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_step_on_mesh_matches_single_device(step_kit, shape):
  task, tx, initial, (ref_losses, ref_params, _) = step_kit
  mesh = mesh_of(shape)
  got_losses, got_params, state = two_steps(task, tx, initial, mesh)
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
  assert_trees_close(got_params, ref_params, atol=1e-5, what=f"mesh {shape}: ")
  assert not np.allclose(got_params["trunk"]["wte"], initial.params["trunk"]["wte"])
  # The state really is laid out on the mesh: fsdp shards `embed`, tensor shards `vocab`.
  wte = state.params["trunk"]["wte"]
  assert wte.sharding.mesh.shape == dict(zip(sharding.MESH_AXES, shape))
  assert wte.sharding.shard_shape(wte.shape) == (V // shape[2], 16 // shape[1])


def test_grad_accumulation_gives_the_same_update(step_kit):
  task, tx, initial, (ref_losses, ref_params, _) = step_kit
  got_losses, got_params, _ = two_steps(task, tx, initial, mesh_of((1, 1, 1)), grad_accum=2)
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
  assert_trees_close(got_params, ref_params, atol=1e-5, what="grad_accum=2: ")


# ----------------------------------------------------------------------------
# train.run: exact resume, interruption, NaN, corrupted checkpoints


def run(config, workdir, task=None, **kwargs):
  lines = []
  state, summary = train.run(
    config, str(workdir), task or make_task(config), log=lines.append, **kwargs
  )
  return state, summary, lines


def train_losses(workdir):
  records = metrics.read_metrics(str(workdir), "train")
  return [r["step"] for r in records], [r["loss"] for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """STEPS steps in one go: (workdir, final params on the host, summary)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  state, summary, lines = run(tiny_config(), workdir)
  assert any("new run" in line for line in lines)
  return workdir, host(state.params), summary


def test_run_writes_metrics_and_learns(uninterrupted):
  workdir, params, summary = uninterrupted
  steps, losses_ = train_losses(workdir)
  assert steps == list(range(1, STEPS + 1))
  assert losses_[-1] < losses_[0] - 0.5, losses_  # the toy sequence is learnable
  evals = metrics.read_metrics(str(workdir), "eval")
  assert [r["step"] for r in evals] == [4, 8]
  assert summary["steps"] == STEPS and summary["last_eval"]["toy/loss"] == evals[-1]["toy/loss"]
  records = metrics.read_metrics(str(workdir), "train")
  lr = train.learning_rate_schedule(tiny_config().train)
  assert [r["lr"] for r in records] == pytest.approx([float(lr(s - 1)) for s in steps])
  assert all(math.isfinite(r["grad_norm"]) for r in records)
  assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == STEPS


def test_extending_a_finished_run_is_exact(uninterrupted, tmp_path):
  """steps=N, then steps=2N in the same workdir == 2N steps in one go."""
  ref_dir, ref_params, _ = uninterrupted
  half = tiny_config(steps=STEPS // 2)
  run(half, tmp_path)
  assert train_losses(tmp_path)[0] == list(range(1, STEPS // 2 + 1))
  state, summary, lines = run(tiny_config(), tmp_path)
  assert any(
    f"resumed from {tmp_path}" in line and f"at step {STEPS // 2}" in line for line in lines
  ), lines
  assert train_losses(tmp_path) == train_losses(ref_dir)
  assert_trees_equal(host(state.params), ref_params, "resumed: ")


@pytest.mark.slow  # another mesh is another program: one more compilation
def test_resume_on_another_mesh(uninterrupted, tmp_path):
  """Half the steps on (2, 2, 2), the rest on (8, 1, 1): the checkpoint is resharded."""
  ref_dir, ref_params, _ = uninterrupted
  run(tiny_config(steps=STEPS // 2), tmp_path)
  config = tiny_config()
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  state, _, lines = run(config, tmp_path)
  assert any("resumed" in line and f"at step {STEPS // 2}" in line for line in lines), lines
  assert state.params["trunk"]["wte"].sharding.mesh.shape["data"] == 8
  steps, losses_ = train_losses(tmp_path)
  ref_steps, ref_losses = train_losses(ref_dir)
  assert steps == ref_steps
  np.testing.assert_allclose(losses_, ref_losses, rtol=1e-5)
  # Not bitwise: another mesh sums in another order (and Adam amplifies the
  # rounding noise of the key bias's exactly-zero gradient, see step_kit).
  assert_trees_close(host(state.params), ref_params, atol=1e-4, what="other mesh: ")


def test_keyboard_interrupt_saves_a_checkpoint_and_resume_is_exact(uninterrupted, tmp_path):
  ref_dir, ref_params, _ = uninterrupted
  config = tiny_config()
  k = 5
  plain = make_task(config).train_batch

  def interrupted_batch(step):
    if step == k:
      raise KeyboardInterrupt
    return plain(step)

  lines = []
  with pytest.raises(KeyboardInterrupt):
    train.run(config, str(tmp_path), make_task(config, interrupted_batch), log=lines.append)
  assert any(f"interrupted at step {k}" in line for line in lines), lines
  checkpointer = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  assert checkpointer.latest_step() == k
  checkpointer.close()
  # Rerunning the same command resumes at k and replays the uninterrupted run.
  state, _, lines = run(config, tmp_path)
  assert any(f"at step {k}" in line and "resumed" in line for line in lines), lines
  assert train_losses(tmp_path) == train_losses(ref_dir)
  assert_trees_equal(host(state.params), ref_params, "after interrupt: ")


def test_task_done_ends_training_early_and_a_resumed_run_ends_there_too(uninterrupted, tmp_path):
  """Task.done sees every evaluation so far, across an interruption (they ride
  in the checkpoint): done after the second (steps 2, 4 of 8) ends training at
  step 4 with the uninterrupted run's records, and a rerun trains no further."""
  ref_dir, _, _ = uninterrupted
  config = tiny_config(eval_every=2)
  plain = make_task(config).train_batch
  seen = []

  def done(evals):
    seen.append([e["step"] for e in evals])
    return len(evals) == 2

  def interrupted_batch(step):
    if step == 3:
      raise KeyboardInterrupt
    return plain(step)

  task = make_task(config, interrupted_batch)
  task.done = done
  with pytest.raises(KeyboardInterrupt):
    train.run(config, str(tmp_path), task, log=lambda line: None)
  task = make_task(config)
  task.done = done
  state, summary, lines = run(config, tmp_path, task)
  assert seen == [[2], [2, 4]]
  assert summary["steps"] == 4 and summary["early_stopped"] and int(state.step) == 4
  assert any("finished early at step 4 of 8" in line for line in lines), lines
  ref_steps, ref_losses = train_losses(ref_dir)
  assert train_losses(tmp_path) == (ref_steps[:4], ref_losses[:4])
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path), "eval")] == [2, 4]
  checkpointer = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  assert checkpointer.latest_step() == 4
  checkpointer.close()
  _, summary, _ = run(config, tmp_path, task)  # a finished run stays finished
  assert summary["steps"] == 4 and summary["early_stopped"] and seen == [[2], [2, 4]]
  assert train_losses(tmp_path) == (ref_steps[:4], ref_losses[:4])


def poisoned_task(config, bad_step):
  """The toy task whose batch `bad_step` has a NaN loss mask (so a NaN loss)."""
  plain = make_task(config).train_batch

  def batch(step):
    b = plain(step)
    if step == bad_step:
      b["loss_mask"] = np.full_like(b["loss_mask"], np.nan)
    return b

  return make_task(config, batch)


def join_checkpoint_threads():
  """Waits for Orbax's background save threads of runs that did not close their manager."""
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and "finalize" in thread.name:
      thread.join(timeout=60)


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(ckpt_every=2)
  bad = 4  # the batch of step index 4 (the 5th step)
  task = poisoned_task(config, bad)
  with pytest.raises(train.NonFiniteLossError) as e:
    run(config, tmp_path, task)
  message = str(e.value)
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  assert f"at step {bad + 1}" in message and "loss" in message
  assert "last good checkpoint is step 4" in message and ckpt_dir in message
  assert "config.train.lr" in message
  # Nothing after the bad step was logged; the last good checkpoint restores, finite.
  assert train_losses(tmp_path)[0] == [1, 2, 3, 4]
  join_checkpoint_threads()  # see test_non_finite_loss_leaves_its_checkpoint_finished
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir)
  assert checkpointer.latest_step() == 4
  tx = train.make_optimizer(config.train)
  state, meta = checkpointer.restore(
    train.abstract_state(task, tx, mesh_of((2, 2, 2)), config.seed)
  )
  checkpointer.close()
  assert int(state.step) == 4 and meta["data_position"] == 4
  assert train.params_finite(state.params)


def test_non_finite_loss_leaves_its_checkpoint_finished(tmp_path, monkeypatch):
  """As above on slow storage: each save takes a second more to finish."""
  import orbax.checkpoint as ocp

  finalize = ocp.CheckpointManager._finalize

  def slow_finalize(self, *args, **kwargs):
    time.sleep(1.0)
    return finalize(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "_finalize", slow_finalize)
  config = tiny_config(ckpt_every=4, steps=6)
  try:
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint is step 4"):
      run(config, tmp_path, poisoned_task(config, 4))
    # The error has reached the caller: the checkpoint it names must be complete.
    assert os.listdir(tmp_path / "checkpoints") == ["4"]
  finally:
    join_checkpoint_threads()


@pytest.mark.slow  # a different lr is a different program: one more compilation
def test_huge_learning_rate_is_caught(tmp_path):
  config = tiny_config(lr=1e30, warmup_steps=0, steps=4)
  with pytest.raises(train.NonFiniteLossError, match=r"Non-finite .* at step \d"):
    run(config, tmp_path)


def corrupt_files(directory, how):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  assert files
  for path in files:
    if how == "garbage":
      with open(path, "wb") as f:
        f.write(os.urandom(64))
    else:  # truncate to half
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.mark.parametrize("how", ["garbage", "truncate"])
def test_corrupted_checkpoint_raises_checkpoint_error_naming_it(uninterrupted, tmp_path, how):
  ref_dir, _, _ = uninterrupted
  workdir = tmp_path / "work"
  shutil.copytree(ref_dir, workdir)
  step_dir = workdir / "checkpoints" / str(STEPS)
  corrupt_files(step_dir / "state", how)
  config = tiny_config()
  task = make_task(config)
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"))
  with pytest.raises(ckpt_lib.CheckpointError, match=str(step_dir)):
    checkpointer.restore(
      train.abstract_state(
        task, train.make_optimizer(config.train), mesh_of((2, 2, 2)), config.seed
      )
    )
  checkpointer.close()
  # train.run meets the same error when it tries to resume.
  with pytest.raises(ckpt_lib.CheckpointError, match=str(step_dir)):
    run(tiny_config(steps=2 * STEPS), workdir, task)


def test_checkpoint_of_another_model_is_reported(uninterrupted, tmp_path):
  ref_dir, _, _ = uninterrupted
  shutil.copytree(ref_dir / "checkpoints", tmp_path / "checkpoints")
  config = tiny_config()
  config.model.d_ff = 64
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  with pytest.raises(ckpt_lib.CheckpointError, match=str(tmp_path / "checkpoints")):
    checkpointer.restore(
      train.abstract_state(
        make_task(config), train.make_optimizer(config.train), mesh_of((2, 2, 2)), config.seed
      )
    )
  checkpointer.close()


# ----------------------------------------------------------------------------
# Config and workdir failure modes


def test_unknown_config_field_is_named():
  config = tiny_config()
  del config.train["measure_peak"]
  config.model.n_layers = 3  # typo of n_layer
  with pytest.raises(ValueError, match=r"config\.model\.n_layers") as e:
    config_lib.check_fields(config, pretrain_configs.get_config("tiny"))
  assert "n_layer" in str(e.value).split("allowed")[-1]
  with pytest.raises(ValueError, match=r"config\.model\.n_layers"):  # what experiments/ call
    cli.checked(config, pretrain_configs.get_config)


@pytest.mark.parametrize(
  "section, field, value",
  [
    ("train", "steps", 0),
    ("train", "batch_size", -4),
    ("train", "lr", 0.0),
    ("train", "min_lr_ratio", 1.5),
    ("train", "grad_accum", 3),
    ("model", "n_head", 3),
  ],
)
def test_invalid_value_is_named(section, field, value):
  config = pretrain_configs.get_config("tiny")
  config[section][field] = value
  with pytest.raises(ValueError, match=rf"config\.{section}\.{field}"):
    pretraining.validate(config)


def test_valid_config_passes_validation():
  pretraining.validate(pretrain_configs.get_config("tiny"))


@pytest.mark.parametrize(
  "shape, pattern",
  [
    ((3, 1, 1), r"config\.mesh.*needs 3 devices; 8 are available"),
    ((-1, 3, 1), r"config\.mesh: 8 devices are not divisible by 3"),
    ((-1, -1, 1), r"config\.mesh.*at most one -1"),
    ((0, 1, 1), r"config\.mesh"),
  ],
)
def test_bad_mesh_is_named(shape, pattern):
  with pytest.raises(ValueError, match=pattern):
    sharding.make_mesh(ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, shape))))


def test_mesh_minus_one_takes_the_rest():
  cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=2))
  assert sharding.mesh_shape(cfg, 8) == (2, 2, 2)


def test_batch_not_divisible_by_mesh_is_named(tmp_path):
  config = tiny_config(batch_size=6)  # data x fsdp = 4
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=6"):
    run(config, tmp_path, make_task(tiny_config()))


def test_validate_checks_the_mesh():
  config = pretrain_configs.get_config("tiny")
  config.mesh.data = 3
  with pytest.raises(ValueError, match=r"config\.mesh"):
    pretraining.validate(config)


def test_validate_checks_sample_tokens():
  config = pretrain_configs.get_config("tiny")
  config.train.sample_tokens = 0
  with pytest.raises(ValueError, match=r"config\.train\.sample_tokens"):
    pretraining.validate(config)


def test_workdir_under_a_file_raises_permission_error_naming_it(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  workdir = blocker / "run"
  with pytest.raises(PermissionError, match=str(workdir)) as e:
    train.prepare_workdir(str(workdir))
  assert "--workdir" in str(e.value)


def test_read_only_workdir_raises_permission_error_naming_it(tmp_path):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    if os.access(workdir, os.W_OK):
      pytest.skip("running as root: chmod does not stop writes")
    with pytest.raises(PermissionError, match=str(workdir)):
      train.prepare_workdir(str(workdir))
  finally:
    workdir.chmod(0o755)


def test_prepare_workdir_creates_and_returns_absolute_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  got = train.prepare_workdir("a/b")
  assert got == str(tmp_path / "a" / "b") and os.path.isdir(got)
  assert os.listdir(got) == []  # the write probe is removed


# ----------------------------------------------------------------------------
# Optimizer: schedule and weight-decay mask


def test_learning_rate_schedule_warmup_then_cosine():
  t = pretrain_configs.get_config("tiny").train
  t.update(lr=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.1)
  lr = train.learning_rate_schedule(t)
  end = 1e-4

  def cosine(s):
    return end + (1e-3 - end) * 0.5 * (1 + math.cos(math.pi * (s - 10) / 100))

  expected = {
    0: 0.0,
    1: 1e-4,
    5: 5e-4,
    10: 1e-3,
    35: cosine(35),
    60: cosine(60),
    100: cosine(100),
    110: end,
    200: end,
  }
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step
  assert float(lr(60)) == pytest.approx((1e-3 + end) / 2, rel=1e-5)  # half-way


def test_no_warmup_starts_at_full_learning_rate():
  t = pretrain_configs.get_config("tiny").train
  t.update(lr=1e-3, warmup_steps=0, steps=100, min_lr_ratio=0.1)
  assert float(train.learning_rate_schedule(t)(0)) == pytest.approx(1e-3)


def decayed_leaves(params) -> dict:
  """Which leaves the optimizer decays: two steps with zero gradients, so only
  the decoupled weight decay can move a parameter (step 0 has lr 0)."""
  t = pretrain_configs.get_config("tiny").train
  t.update(lr=1e-2, warmup_steps=1, steps=10, weight_decay=0.5)
  tx = train.make_optimizer(t)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def two_updates(params):
    state = tx.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    p = params
    for _ in range(2):
      updates, state = tx.update(zeros, state, p)
      p = optax.apply_updates(p, updates)
    return jax.tree_util.tree_map(lambda a, b: (a != b).any(), params, p)

  moved = jax.device_get(two_updates(params))
  return {
    jax.tree_util.keystr(path): bool(m)
    for path, m in jax.tree_util.tree_flatten_with_path(moved)[0]
  }


@pytest.fixture(scope="module")
def decay():
  """({leaf name: decayed?}, {leaf name: shape}) for the tiny model's parameters."""
  model = model_lib.build(tiny_config())
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32))
  # All ones, so that decay moves every parameter it applies to.
  params = jax.tree_util.tree_map(
    lambda s: jnp.ones(s.shape, s.dtype), nn.meta.unbox(abstract["params"])
  )
  shapes = {
    jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  return decayed_leaves(params), shapes


def test_weight_decay_skips_1d_params_and_decays_matrices(decay):
  moved, shapes = decay
  for name, m in moved.items():
    if len(shapes[name]) == 1:
      assert not m, f"{name} is 1-D and must not be decayed"
  for name in (
    "['trunk']['wte']",
    "['trunk']['block_0']['attn']['w_qkv']",
    "['trunk']['block_0']['attn']['w_out']",
    "['trunk']['block_0']['mlp']['w_fc']",
    "['trunk']['block_0']['mlp']['w_proj']",
  ):
    assert moved[name], f"{name} must be decayed"
  assert not moved["['trunk']['ln_f']['scale']"]


def test_weight_decay_skips_every_bias(decay):
  moved, _ = decay
  biases = {k: m for k, m in moved.items() if "['b_" in k or "['bias']" in k}
  assert "['trunk']['block_0']['attn']['b_qkv']" in biases
  assert not any(biases.values()), [k for k, m in biases.items() if m]


def test_count_progress_reports_about_every_tenth_and_the_end():
  from gptjax import metrics

  lines = []
  progress = metrics.CountProgress(1000, lines.append, label="[x] ")
  for done in range(0, 1000, 64):
    progress.update(done)
  progress.update(1000)
  assert 8 <= len(lines) <= 11
  assert lines[-1].startswith("[x] 1,000/1,000 (100%)")
  metrics.CountProgress(1000, None).update(500)  # no log: silent, no error
