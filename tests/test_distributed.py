"""Multi-process runs and elastic resume: what is exact across topologies.

What is exact (the README's promise, issue 16 #11):
  * same mesh, same device count: a resumed or extended run is bit-identical
    to an uninterrupted one (losses and parameters, `assert_array_equal`);
  * a checkpoint restored onto another mesh or device count holds exactly
    the saved parameters and optimizer state (restoring only moves bytes);
  * another topology computes the same steps on the same data in another
    reduction order, so losses and parameters agree only up to float32
    rounding. Measured on this toy task over 8 steps ((8,1,1) against
    (2,1,1) and (2,2,2), from scratch or resumed): max |d loss| 2.4e-7,
    max |d param| 3.8e-5 -- Adam divides by sqrt(v), which turns the rounding
    noise of gradients that are zero in exact arithmetic (the key bias's) into
    parameter steps of ~lr. Asserted: |d loss| <= 1e-5, |d param| <= 1e-4.
    The gap grows with the number of steps (a tiny pretraining run of 300
    steps: 5.6e-4 between 1 and 4 devices, issue 16 #11).

The two-process tests run the README's localhost recipe: two processes with
2 CPU devices each (gloo collectives), joined through GPTJAX_COORDINATOR /
GPTJAX_NUM_PROCESSES / GPTJAX_PROCESS_ID or the equivalent flags, against one
process with 4 devices. Last, the memory plan (`--print_memory`).
"""

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO

from configs import pretrain as pretrain_configs
from gptjax import (
  checkpoint as ckpt_lib,
  losses,
  memory,
  metrics,
  model as model_lib,
  sharding,
  train,
)

B, T, V = 8, 8, 32  # global batch, sequence length, vocabulary
STEPS = 8
LOSS_BOUND = 1e-5  # |d loss| across topologies (measured 2.4e-7)
PARAM_BOUND = 1e-4  # |d param| across topologies (measured 3.8e-5)


# ----------------------------------------------------------------------------
# Choosing how to join a multi-process job (pure: no JAX started)


def test_single_process_needs_no_coordinator():
  assert sharding.distributed_settings(env={}) is None
  assert sharding.distributed_settings("h:1", 1, 0, env={}) is None
  # One Slurm task, or a one-host TPU VM, is a single-process run too.
  slurm_one = dict(
    SLURM_JOB_ID="7",
    SLURM_STEP_NODELIST="n1",
    SLURM_NTASKS="1",
    SLURM_PROCID="0",
    SLURM_LOCALID="0",
  )
  assert sharding.distributed_settings(env=slurm_one) is None
  assert sharding.distributed_settings(env={"TPU_WORKER_HOSTNAMES": "localhost"}) is None


def test_flags_then_environment_then_cluster_detection():
  env = {"GPTJAX_COORDINATOR": "10.0.0.1:1234", "GPTJAX_NUM_PROCESSES": "4"}
  env["GPTJAX_PROCESS_ID"] = "3"
  assert sharding.distributed_settings(env=env) == dict(
    coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3
  )
  # Flags win over the environment.
  assert sharding.distributed_settings("127.0.0.1:9", 2, 1, env=env) == dict(
    coordinator_address="127.0.0.1:9", num_processes=2, process_id=1
  )
  slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="16", SLURM_PROCID="5")
  slurm["SLURM_LOCALID"] = "5"
  assert sharding.distributed_settings(env=slurm) == {}  # JAX reads Slurm's variables
  assert sharding.distributed_settings(env={"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}) == {}
  assert sharding.distributed_settings(env={"GPTJAX_DISTRIBUTED": "1"}) == {}
  assert sharding.distributed_settings(env={"GPTJAX_DISTRIBUTED": "0"}) is None


@pytest.mark.parametrize(
  "args, env, pattern",
  [
    (("h:1", None, 0), {}, r"--num_processes not set"),
    ((None, 2, 0), {}, r"--coordinator_address not set"),
    (("h:1", 2, 2), {}, r"--process_id=2 must be in \[0, --num_processes=2\)"),
    (("h:1", 0, 0), {}, r"--num_processes=0 must be at least 1"),
    (("localhost", 2, 0), {}, r"--coordinator_address='localhost' must be host:port"),
    ((), {"GPTJAX_COORDINATOR": "h:1", "GPTJAX_PROCESS_ID": "0"}, "GPTJAX_NUM_PROCESSES not set"),
    ((), {"GPTJAX_COORDINATOR": "h:1", "GPTJAX_NUM_PROCESSES": "two", "GPTJAX_PROCESS_ID": "0"},
     "GPTJAX_NUM_PROCESSES='two' must be an integer"),
  ],
)  # fmt: skip
def test_incomplete_settings_are_named(args, env, pattern):
  with pytest.raises(ValueError, match=pattern):
    sharding.distributed_settings(*args, env=env)


def test_initialising_is_harmless_once_jax_runs():
  """The stages' own call stays a no-op in a single-process run; a multi-process
  one configured after JAX has started says what to do instead of JAX's error."""
  jax.devices()  # the backend is up
  sharding.maybe_initialize_distributed()
  assert not sharding.initialize_distributed(env={})
  env = {"GPTJAX_COORDINATOR": "127.0.0.1:1", "GPTJAX_NUM_PROCESSES": "2"}
  env["GPTJAX_PROCESS_ID"] = "0"
  with pytest.raises(RuntimeError, match="before any JAX computation"):
    sharding.initialize_distributed(env=env)


def test_entry_point_reports_bad_distributed_flags_in_one_line(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.pretrain", f"--workdir={tmp_path}", "--num_processes=2"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  assert "FATAL ValueError: --coordinator_address, --process_id not set" in proc.stderr
  assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------
# Each process's rows of the global batch


def test_process_rows_in_one_process_are_the_whole_batch():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  np.testing.assert_array_equal(sharding.process_rows(mesh, 8), np.arange(8))


def test_pipeline_reads_any_rows_of_the_global_batch(tiny_pipeline):
  full = tiny_pipeline.train_batch(3, 8)
  for rows in (np.arange(4), np.arange(4, 8), np.array([1, 2, 5, 6])):
    part = tiny_pipeline.train_batch(3, 8, rows)
    for key, value in full.items():
      np.testing.assert_array_equal(part[key], value[rows], err_msg=f"{key} rows {rows}")


# ----------------------------------------------------------------------------
# Elastic resume: a checkpoint of one mesh continues on another


def tiny_config(mesh=(8, 1, 1), num_devices=-1, **train) -> ml_collections.ConfigDict:
  c = pretrain_configs.get_config("tiny")
  c.model.update(vocab_size=V, max_len=T, n_layer=1, n_head=2, d_model=16, d_ff=32)
  # Warmup longer than any run and no decay: the schedule, and so the step,
  # does not depend on train.steps, so a run can be extended exactly.
  c.train.update(
    steps=STEPS, batch_size=B, lr=5e-2, min_lr_ratio=1.0, warmup_steps=2 * STEPS, log_every=1
  )
  c.train.update(eval_every=100, ckpt_every=4, keep_checkpoints=3, measure_peak=False)
  c.train.update(train)
  c.mesh.update(dict(zip(sharding.MESH_AXES, mesh)), num_devices=num_devices)
  return c


def toy_batch(seed: int, step: int) -> dict:
  """Rows count upwards mod V from a random start: learnable, a pure function of step."""
  start = np.random.default_rng((seed, step)).integers(0, V, (B, 1))
  rows = ((start + np.arange(T + 1)) % V).astype(np.int32)  # [B, T+1]
  return {"tokens": rows[:, :-1], "targets": rows[:, 1:], "loss_mask": np.ones((B, T), np.float32)}


def make_task(config) -> train.Task:
  model = model_lib.build(config)
  batch = functools.partial(toy_batch, config.seed)
  return train.Task(
    name="elastic",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=batch,
    example_batch=batch(0),
    tokens_per_step=B * T,
  )


def run(config, workdir) -> tuple[dict, list[float]]:
  """Trains to config.train.steps in workdir: (final params on the host, all losses)."""
  state, _ = train.run(config, str(workdir), make_task(config), log=lambda _: None)
  losses_ = [r["loss"] for r in metrics.read_metrics(str(workdir), "train")]
  return jax.tree_util.tree_map(np.asarray, jax.device_get(state.params)), losses_


def restored_state(config, workdir, step):
  """The TrainState of checkpoint `step`, restored onto config.mesh, on the host."""
  mesh = sharding.make_mesh(config.mesh)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    task = make_task(config)
    tx = train.make_optimizer(config.train)
    state, _ = checkpointer.restore(train.abstract_state(task, tx, mesh, config.seed), step)
  finally:
    checkpointer.close()
  shape = tuple(jax.tree_util.tree_leaves(state.params)[0].sharding.mesh.shape.values())
  return jax.tree_util.tree_map(np.asarray, jax.device_get(state)), shape


def max_abs_diff(a, b) -> float:
  return max(
    float(np.max(np.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


def assert_trees_equal(a, b, what):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_compilation_cache):
  """STEPS uninterrupted steps on (8, 1, 1), checkpoints at 4 and 8: (workdir, params, losses)."""
  workdir = tmp_path_factory.mktemp("reference")
  params, losses_ = run(tiny_config(), workdir)
  return workdir, params, losses_


def test_same_mesh_resume_is_bit_identical(reference, tmp_path):
  ref_dir, ref_params, ref_losses = reference
  shutil.copytree(ref_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
  shutil.copy(ref_dir / "metrics.jsonl", tmp_path / "metrics.jsonl")
  metrics_4 = [line for line in open(tmp_path / "metrics.jsonl") if json.loads(line)["step"] <= 4]
  (tmp_path / "metrics.jsonl").write_text("".join(metrics_4))
  params, losses_ = run(tiny_config(), tmp_path)
  assert losses_ == ref_losses
  assert_trees_equal(params, ref_params, "resumed on (8, 1, 1): ")


@pytest.mark.parametrize("mesh, num_devices", [((2, 1, 1), 2), ((2, 2, 2), -1), ((1, 4, 2), -1)])
def test_checkpoint_restores_exactly_onto_another_mesh(reference, mesh, num_devices):
  """Parameters AND optimizer state, bit for bit, laid out on the new mesh."""
  ref_dir, _, _ = reference
  saved, saved_shape = restored_state(tiny_config(), ref_dir, 4)
  got, shape = restored_state(tiny_config(mesh, num_devices), ref_dir, 4)
  assert saved_shape == (8, 1, 1) and shape == mesh
  assert int(got.step) == 4
  assert_trees_equal(got.params, saved.params, f"params on {mesh}: ")
  assert_trees_equal(got.opt_state, saved.opt_state, f"optimizer state on {mesh}: ")
  np.testing.assert_array_equal(got.rng, saved.rng)


@pytest.mark.slow  # each mesh is another program: one compilation each
@pytest.mark.parametrize("mesh, num_devices", [((2, 1, 1), 2), ((2, 2, 2), -1)])
def test_resume_on_another_mesh_continues_the_run(reference, tmp_path, mesh, num_devices):
  """Steps 1-4 on (8, 1, 1), 5-8 on `mesh`: the same data and the same losses as the
  uninterrupted run, up to reduction order (bounds in the module docstring)."""
  ref_dir, ref_params, ref_losses = reference
  shutil.copytree(ref_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
  params, losses_ = run(tiny_config(mesh, num_devices), tmp_path)
  assert len(losses_) == STEPS // 2  # steps 5..8, the data position came from the checkpoint
  d_loss = max(abs(a - b) for a, b in zip(losses_, ref_losses[STEPS // 2 :]))
  d_param = max_abs_diff(params, ref_params)
  print(f"resume (8,1,1) -> {mesh}: max |d loss| {d_loss:.2e}, max |d param| {d_param:.2e}")
  assert d_loss <= LOSS_BOUND and d_param <= PARAM_BOUND
  assert d_loss < 1e-2 * abs(ref_losses[-1] - ref_losses[0])  # far below what training changes


@pytest.mark.slow
def test_another_topology_from_scratch_agrees_up_to_rounding(reference, tmp_path):
  """Not bit-identical (it sums in another order), within the same bounds."""
  _, ref_params, ref_losses = reference
  params, losses_ = run(tiny_config((2, 2, 2)), tmp_path)
  d_loss = max(abs(a - b) for a, b in zip(losses_, ref_losses))
  d_param = max_abs_diff(params, ref_params)
  print(f"from scratch (2,2,2) vs (8,1,1): max |d loss| {d_loss:.2e}, |d param| {d_param:.2e}")
  assert d_loss <= LOSS_BOUND and d_param <= PARAM_BOUND


@pytest.mark.parametrize(
  "mesh, batch_size, pattern",
  [
    ((3, 1, 1), B, r"config\.mesh=.*needs 3 devices; 8 are available"),
    ((-1, 3, 1), B, r"config\.mesh: 8 devices are not divisible by 3"),
    ((8, 1, 1), 12, r"config\.train\.batch_size=12 must be divisible by data x fsdp = 8"),
  ],
)
def test_mesh_that_does_not_fit_is_named_before_restoring(
  reference, tmp_path, mesh, batch_size, pattern
):
  ref_dir, _, _ = reference
  shutil.copytree(ref_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
  config = tiny_config(mesh, batch_size=batch_size)
  with pytest.raises(ValueError, match=pattern):
    train.run(config, str(tmp_path), make_task(config), log=lambda _: None)


# ----------------------------------------------------------------------------
# Two processes on localhost, as the README documents


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def pretrain_command(workdir, cache_dir) -> list[str]:
  return [
    sys.executable,
    "-m",
    "experiments.pretrain",
    "--config=configs/pretrain.py:tiny",
    f"--workdir={workdir}",
    f"--cache_dir={cache_dir}",
    "--config.data.max_chars=120000",
    "--config.data.tokenizer_chars=100000",
    "--config.train.steps=6",
    "--config.train.log_every=1",
    "--config.train.eval_every=6",
    "--config.train.eval_batches=1",
    "--config.train.ckpt_every=3",
    "--config.train.measure_peak=False",
  ]


def cpu_env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("GPTJAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.update(extra)
  return env


WORKER = """
import sys
import numpy as np
import ml_collections
from gptjax import sharding

sharding.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))  # before any JAX call
import jax

mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
B = 8
rows = sharding.process_rows(mesh, B)
table = np.arange(B * 3).reshape(B, 3)  # the global batch: row r holds 3r, 3r+1, 3r+2
own = sharding.shard_batch({"x": table[rows]}, mesh, global_batch=B)["x"]
sliced = sharding.shard_batch({"x": table}, mesh)["x"]
total = jax.jit(lambda a, b: (a.sum(0), b.sum(0)))(own, sliced)
doubled = sharding.to_host(jax.jit(lambda a: 2 * a)(own))  # sharded over both processes
copy = sharding.local_copy(own)  # the whole array on this process's first device
with sharding.local_mesh():
  local_sum = int(jax.jit(lambda a: a.sum())(copy))
assert copy.devices() == {jax.local_devices()[0]}
again = sharding.local_copy(copy)  # a copy of a copy is the same array, not two stacked
assert again.shape == copy.shape and (np.asarray(again) == np.asarray(copy)).all()
print("RESULT", jax.process_index(), rows.tolist(), *(t.tolist() for t in jax.device_get(total)),
      int(doubled.sum()), local_sum, own.shape, flush=True)
"""


def test_each_process_feeds_its_own_rows(tmp_path):
  """Two processes x 2 devices: process i builds rows 4i..4i+3 only, and the
  global array they assemble is the whole batch (its column sums say so)."""
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  address = f"127.0.0.1:{free_port()}"
  env = cpu_env(2, PYTHONPATH=str(REPO))
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), address, str(i)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
    )
    for i in range(2)
  ]  # fmt: skip
  outs = [p.communicate(timeout=300) for p in procs]
  column_sums = [sum(3 * r + c for r in range(8)) for c in range(3)]  # [84, 92, 100]
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, err[-3000:]
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    assert line == (
      f"RESULT {i} {list(range(4 * i, 4 * i + 4))} {column_sums} {column_sums} "
      f"{2 * sum(column_sums)} {sum(column_sums)} (8, 3)"
    )


TRAIN_WORKER = """
import json, sys
from gptjax import sharding

sharding.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))  # before any JAX call
import numpy as np
from gptjax import train
from test_distributed import make_task, tiny_config

config = tiny_config((4, 1, 1), steps=3, ckpt_every=3)
task = make_task(config)
plain, seen = task.train_batch, []

def global_batch(step):
  raise AssertionError("a process built the whole global batch")

def local_batch(step, rows):
  seen.append(rows.tolist())
  return {k: v[rows] for k, v in plain(step).items()}  # the toy batch is cheap to slice

task.train_batch, task.local_batch = global_batch, local_batch
state, _ = train.run(config, sys.argv[3], task, log=lambda _: None)
print("RESULT", json.dumps(seen[0]), len(seen), flush=True)
"""


@pytest.mark.slow  # ~20 s: the fast subset stays under 5 minutes
def test_train_loop_builds_only_each_process_rows(tmp_path):
  """train.run in two processes x 2 devices: each process asks the Task for its
  own 4 rows (never the global batch), and the run matches one process x 4 devices."""
  script = tmp_path / "train_worker.py"
  script.write_text(TRAIN_WORKER)
  address, workdir = f"127.0.0.1:{free_port()}", tmp_path / "two"
  env = cpu_env(2, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), address, str(i), str(workdir)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    for i in range(2)
  ]  # fmt: skip
  outs = [p.communicate(timeout=300) for p in procs]
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, err[-3000:]
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    assert line == f"RESULT {json.dumps(list(range(4 * i, 4 * i + 4)))} 3"
  _, one = run(tiny_config((4, 1, 1), num_devices=4, steps=3, ckpt_every=3), tmp_path / "one")
  two = [r["loss"] for r in metrics.read_metrics(str(workdir), "train")]
  assert len(two) == 3 and max(abs(a - b) for a, b in zip(one, two)) <= LOSS_BOUND


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, data_cache_dir):
  """2 processes x 2 CPU devices == 1 process x 4 devices: same data, same losses,
  same parameters (up to rounding), one metrics file, one checkpoint per save.
  The two processes start on an empty data cache of their own, as a first run
  would: process 0 prepares it while process 1 waits (`sharding.primary_first`)."""
  single, multi = tmp_path / "single", tmp_path / "multi"
  proc = subprocess.run(
    pretrain_command(single, data_cache_dir), cwd=REPO, env=cpu_env(4), capture_output=True,
    text=True, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  port, start = free_port(), time.time()
  procs = [
    subprocess.Popen(
      pretrain_command(multi, tmp_path / "multi_cache"),
      cwd=REPO,
      env=cpu_env(
        2,
        GPTJAX_COORDINATOR=f"127.0.0.1:{port}",
        GPTJAX_NUM_PROCESSES="2",
        GPTJAX_PROCESS_ID=str(i),
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  print(f"two-process pretrain: {time.time() - start:.1f} s wall")
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in outs[0][0]
  # progress is printed once, by process 0 (gloo's C++ "[Gloo] Rank i is connected"
  # lines bypass Python's stdout, and may interleave with each other)
  assert "[pretrain]" in outs[0][0] and "[pretrain]" not in outs[1][0]
  records = {w: metrics.read_metrics(str(w), "train") for w in (single, multi)}
  assert [r["step"] for r in records[multi]] == list(range(1, 7))  # written once, by process 0
  for a, b in zip(records[single], records[multi]):
    assert a["accuracy"] == b["accuracy"]  # same rows, same predictions
    assert abs(a["loss"] - b["loss"]) <= LOSS_BOUND, (a["step"], a["loss"], b["loss"])
  assert sorted(os.listdir(multi / "checkpoints")) == ["3", "6"]
  # The two processes' checkpoint restores in this one process (8 devices):
  # elastic resume across process counts, too.
  config = pretrain_configs.get_config("tiny")
  model = model_lib.build(config)
  example = {"tokens": np.zeros((1, config.model.max_len), np.int32)}
  got, step = train.restore_params(str(multi), config, model, example)
  want, _ = train.restore_params(str(single), config, model, example)
  assert step == 6
  assert max_abs_diff(jax.device_get(got), jax.device_get(want)) <= PARAM_BOUND


# ----------------------------------------------------------------------------
# Memory planning


def test_activation_count_by_hand():
  cfg = model_lib.TransformerConfig(
    vocab_size=10, max_len=3, n_layer=2, n_head=2, d_model=4, d_ff=8
  )
  # Per layer and token: 6D + 4D + 3HT + 2F = 24 + 16 + 18 + 16 = 74 float32 values;
  # head: 2D = 8 values + 2V = 20 float32 logits. 5 tokens, 2 layers.
  assert memory.activation_bytes(cfg, 5, 1) == 5 * (2 * 74 * 4 + 8 * 4 + 20 * 4)
  # tensor=2 halves everything split over heads, MLP and vocabulary: 24 + 25 = 49; 8 + 10.
  assert memory.activation_bytes(cfg, 5, 2) == 5 * (2 * 49 * 4 + 8 * 4 + 10 * 4)


def test_plan_divides_what_the_mesh_shards():
  config = tiny_config((1, 1, 1), num_devices=1)
  n_params = model_lib.count_params(
    jax.eval_shape(lambda: make_task(config).model.init(jax.random.PRNGKey(0), **{
      "tokens": np.zeros((1, T), np.int32)})["params"])
  )  # fmt: skip
  one = memory.plan(config, sharding.make_mesh(config.mesh))
  assert one.params == one.gradients == 4 * n_params  # float32
  assert 2 * one.params <= one.optimizer <= 2 * one.params + 64  # AdamW mu, nu (+ counts)
  assert one.tokens_per_device == B * T and one.batch == B * T * (4 + 4 + 4)
  dp = memory.plan(tiny_config((8, 1, 1)), sharding.make_mesh(tiny_config((8, 1, 1)).mesh))
  assert dp.params == one.params  # data parallelism replicates parameters
  assert dp.tokens_per_device == B * T // 8 and dp.activations == one.activations // 8
  fsdp = memory.plan(tiny_config((1, 8, 1)), sharding.make_mesh(tiny_config((1, 8, 1)).mesh))
  assert one.params / 8 <= fsdp.params < one.params / 4  # sharded along `embed` (not biases)
  # Twice the batch in two micro-batches: the activations of one micro-batch.
  accum = tiny_config((8, 1, 1), grad_accum=2, batch_size=2 * B)
  assert memory.plan(accum, sharding.make_mesh(accum.mesh)).activations == dp.activations


def test_plan_names_a_batch_the_mesh_cannot_split():
  config = tiny_config((8, 1, 1), grad_accum=2, batch_size=24)
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=24 .* = 16"):
    memory.plan(config, sharding.make_mesh(config.mesh))


def test_estimate_tracks_xla_compiled_step(jax_compilation_cache):
  """The counted total within 30% of XLA's buffer assignment (float32, no dropout)."""
  config = tiny_config((8, 1, 1))
  config.model.update(max_len=64, d_model=64, n_head=4, d_ff=256, n_layer=2, vocab_size=256)
  config.train.batch_size = 64
  mesh = sharding.make_mesh(config.mesh)
  p = memory.plan(config, mesh)
  xla = memory.compiled(config, mesh)
  assert xla["arguments"] >= p.params + p.optimizer  # the donated state is an argument
  print(f"estimate {p.total:,} B, XLA {xla['total']:,} B per device")
  assert 0.7 <= p.total / xla["total"] <= 1.3, (p.total, xla)


@pytest.mark.slow
def test_print_memory_reports_before_training(tmp_path):
  proc = subprocess.run(
    [
      sys.executable, "-m", "experiments.pretrain", "--config=configs/pretrain.py:tiny",
      f"--workdir={tmp_path / 'run'}", "--print_memory", "--device_memory_gib=0.001",
    ],
    cwd=REPO, env=cpu_env(8), capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "memory per device, mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in proc.stdout
  assert "XLA compiled step: total" in proc.stdout
  assert "DOES NOT FIT" in proc.stdout  # 1 MiB of device memory
  assert not (tmp_path / "run").exists()  # nothing trained, nothing written


# ----------------------------------------------------------------------------
# Every stage's Task gives each process only its own rows


def _assert_local_rows_match(task, rows=np.array([2, 3])):
  for step in (0, 1, 5):  # 5 crosses an epoch: a new permutation
    whole, local = task.train_batch(step), task.local_batch(step, rows)
    assert sorted(local) == sorted(whole)
    for k in whole:
      np.testing.assert_array_equal(local[k], whole[k][rows], err_msg=k)


def test_sft_builds_its_rows_rm_and_dpo_pack_whole_batches():
  """The SFT Task defines local_batch: rows r of batch `step` are exactly
  rows r of the global batch (so a multi-host run sees the data order of a
  single-host one) without building the whole batch. The reward model's and
  DPO's packed batches are built whole by every process (rows of sequences
  and labels differ in length; `shard_batch` keeps each array's own rows),
  their rows split evenly over the batch shards."""
  from configs import common
  from gptjax import sft
  from gptjax.reward_model import comparisons as comp_lib, training as rm_training
  from gptjax.rlhf import dpo

  rng = np.random.default_rng(0)
  config = ml_collections.ConfigDict(
    {"seed": 3, "train": {"batch_size": 4, "eval_batches": 1, "grad_accum": 1}}
  )
  config.mesh = common.mesh_config()
  n, P, K = 6, 7, 3
  ids = rng.integers(0, V, (n, T + 1)).astype(np.int32)
  rows = sft.PackedRows(
    ids, rng.random((n, T + 1)).astype(np.float32), np.tile(np.arange(T + 1), (n, 1)),
    np.ones((n, T + 1), np.int32), n, 0,
  )  # fmt: skip
  _assert_local_rows_match(sft.build_task(config, None, rows, rows, None))

  comps = comp_lib.Comparisons(
    rng.integers(0, V, (P, K, T)).astype(np.int32), np.ones((P, K, T), bool),
    np.tile(np.arange(K, dtype=np.int32), (P, 1)), np.zeros((P, K), np.float32),
    ["p"] * P, [["r"] * K] * P, ["f"] * P,
  )  # fmt: skip
  config.dpo = {"beta": 0.1, "loss": "sigmoid", "label_smoothing": 0.0}
  arrays = {"tokens": comps.tokens, "token_mask": comps.token_mask, "ranking": comps.ranking}
  for task in (
    rm_training.build_task(config, None, comps, None, None),
    dpo.build_task(config, None, arrays, arrays, None),
  ):
    assert task.local_batch is None
    for step in (0, 5):
      batch = task.train_batch(step)
      assert batch["last"].shape == batch["ranking"].shape == (4, K)
      assert len(batch["tokens"]) % 8 == 0  # lcm(8, data x fsdp = 8 test devices)


def test_other_processes_are_quiet_unless_asked(monkeypatch):
  """Process 0 prints progress; the others' stdout goes nowhere unless
  GPTJAX_LOG_ALL_PROCESSES=1 (their stderr is untouched)."""
  import sys

  monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  assert not sharding.quiet_other_processes({})
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not sharding.quiet_other_processes({sharding.ENV_LOG_ALL_PROCESSES: "1"})
  stdout = sys.stdout
  assert sharding.quiet_other_processes({})
  assert sys.stdout is not stdout and sys.stdout.name == os.devnull


# ----------------------------------------------------------------------------
# The reward-model and RLHF stages as two processes


def two_processes(args: list[str], timeout: int = 900) -> list[str]:
  """`python <args>` as processes 0 and 1 of a localhost job (1 CPU device each);
  asserts both succeed and returns their stdouts."""
  port = free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, *args, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"],
      cwd=REPO, env=cpu_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for i in range(2)
  ]  # fmt: skip
  outs = [p.communicate(timeout=timeout) for p in procs]
  failed = [
    (i, p.returncode, err) for i, (p, (_, err)) in enumerate(zip(procs, outs)) if p.returncode
  ]
  # both stderrs: the process that aborts first is often only the victim of the other's error
  assert not failed, "\n".join(
    f"--- process {i} exited {rc}:\n{err[-2500:]}" for i, rc, err in failed
  )
  return [out for out, _ in outs]


def two_and_one(args: list[str], two: str, one: str, split: str, keys: tuple[str, ...]) -> None:
  """Runs a stage as two processes (workdir `two`) and as one process x 2
  devices (`one`); the `split` records are written once and agree on `keys`
  up to float32 rounding (the same data, sums in another order)."""
  two_processes([*args, f"--workdir={two}"])
  proc = subprocess.run(
    [sys.executable, *args, f"--workdir={one}"], cwd=REPO, env=cpu_env(2), capture_output=True,
    text=True, timeout=900,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = metrics.read_metrics(one, split), metrics.read_metrics(two, split)
  assert [r["step"] for r in b] == [r["step"] for r in a] and b  # one writer, every step
  for ra, rb in zip(a, b):
    for key in keys:
      assert ra[key] == pytest.approx(rb[key], abs=1e-4), (split, ra["step"], key)


@pytest.mark.slow
def test_sft_reward_model_and_rlhf_stages_run_as_two_processes(sft_run, tmp_path):
  """experiments.sft, .reward_model and .rlhf, unchanged, as two processes with
  the flags of the README's recipe: records written once (by process 0), and
  PPO's equal to one process x 2 devices up to float32 rounding (pretraining's
  test above compares losses the same way). SFT samples during its evaluation
  off the mesh (it once failed in any two-process run); the RM and the PPO
  state are saved as global arrays."""
  sft, rm = str(sft_run["sft"]), str(tmp_path / "rm")
  sft_two = str(tmp_path / "sft_two")
  two_processes(
    ["-m", "experiments.sft", "--config=configs/sft.py:tiny", f"--pretrained={sft_run['pretrain']}",
     f"--workdir={sft_two}", "--config.sft.n_demos=300", "--config.train.steps=4",
     "--config.train.eval_every=4", "--config.train.ckpt_every=4", "--config.train.log_every=1",
     "--config.eval.n_per_family=1", "--config.eval.n_degeneration=2"],
  )  # fmt: skip
  steps = [r["step"] for r in metrics.read_metrics(sft_two, "train")]
  assert steps == sorted(set(steps)) and steps[-1] == 4, steps  # one writer, to the end
  two_processes(
    ["-m", "experiments.reward_model", "--config=configs/reward_model.py:tiny", f"--sft={sft}",
     f"--workdir={rm}", "--config.comparisons.n_prompts=32", "--config.comparisons.n_heldout=16",
     "--config.rm.epochs=1", "--config.eval.data_fractions=()", "--config.train.log_every=1"],
  )  # fmt: skip
  steps = [r["step"] for r in metrics.read_metrics(rm, "train")]
  assert steps == list(range(1, len(steps) + 1)) and steps, steps  # one writer
  assert os.path.exists(os.path.join(rm, "eval.json"))
  two_and_one(
    ["-m", "experiments.rlhf", "--config=configs/rlhf.py:tiny", f"--sft={sft}",
     f"--reward_model={rm}", "--config.ppo.iterations=2", "--config.ppo.rollout_batch=8",
     "--config.ppo.minibatches=2", "--config.eval.n_per_family=1",
     "--config.eval.ptx_eval_batches=1"],
    str(tmp_path / "rlhf_two"), str(tmp_path / "rlhf_one"), "ppo", ("kl", "policy_loss"),
  )  # fmt: skip
  assert os.path.exists(os.path.join(tmp_path, "rlhf_two", "eval.json"))
