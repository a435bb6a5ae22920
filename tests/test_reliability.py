"""Reliability (issue 16): graceful stops that always save, checkpoints that cannot
lie, resumed metrics equal to an uninterrupted run's, locked workdirs, refused
config changes, a full disk that loses nothing, and one clear line for bad input.

The fast tests drive `train.run` in-process on test_train's tiny config; the
slow ones stop real runs (a tiny pretraining run, a tiny RLHF stage) with
signals at random moments, start-up included, in subprocesses on one CPU
device. Bad corpora, killed data builds and pipeline config changes are in
test_reliability_inputs.py.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, run_entry_point
from etils import epath
from test_train import (
  STEPS,
  assert_trees_equal,
  host,
  make_task,
  poisoned_task,
  run,
  tiny_config,
)

from gptjax import checkpoint as ckpt_lib, cli, config as config_lib, metrics, runs, train

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


@pytest.fixture(autouse=True)
def no_stop_left_behind():
  train.clear_stop()
  yield
  train.clear_stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """STEPS uninterrupted steps: (workdir, final params, records without timing)."""
  workdir = tmp_path_factory.mktemp("reference")
  state, _, _ = run(tiny_config(), workdir)
  return workdir, host(state.params), records(workdir)


def records(workdir) -> list[dict]:
  return [metrics.without_timing(r) for r in metrics.read_metrics(str(workdir))]


def stop_at(config, batch_index):
  """The toy task, asking for a graceful stop while batch `batch_index` is fetched."""
  plain = make_task(config).train_batch

  def batch(i):
    if i == batch_index:
      train.request_stop("SIGTERM")
    return plain(i)

  return make_task(config, batch)


def latest(workdir):
  c = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return c.latest_step()
  finally:
    c.close()


# ---------------------------------------------------------------- 1, 2, 4: graceful stop


@pytest.mark.parametrize("k", [0, 2, 5])
def test_stop_request_saves_after_the_step_and_resume_is_exact(reference, tmp_path, k):
  """Defect 1: the stop is a flag checked between steps, so the step in flight
  completes (nothing donated is lost), its records are written, it is saved."""
  _, ref_params, ref_records = reference
  config = tiny_config()
  lines = []
  with pytest.raises(train.GracefulStop, match=rf"after step {k + 1}.*checkpoint step {k + 1}"):
    train.run(config, str(tmp_path), stop_at(config, k), log=lines.append)
  assert any("saving a checkpoint before exiting" in line for line in lines), lines
  assert latest(tmp_path) == k + 1
  train.clear_stop()
  state, _, _ = run(config, tmp_path)
  assert records(tmp_path) == ref_records
  assert_trees_equal(host(state.params), ref_params, f"stopped after {k + 1}: ")


def test_stop_before_the_first_step_saves_nothing_and_says_so(tmp_path):
  """Defect 2: a stop requested during start-up is seen before step 1."""
  train.request_stop("SIGINT")
  with pytest.raises(train.GracefulStop, match="after step 0; there is no checkpoint yet"):
    run(tiny_config(), tmp_path)
  assert latest(tmp_path) is None


def test_stop_right_after_resuming_names_the_checkpoint(reference, tmp_path):
  run(tiny_config(steps=3), tmp_path)
  train.request_stop("SIGTERM")
  with pytest.raises(train.GracefulStop, match="resume from checkpoint step 3 in"):
    run(tiny_config(), tmp_path)
  assert latest(tmp_path) == 3


def test_a_loop_of_iterations_says_iteration(tmp_path):
  """RLHF's loop counts iterations: its stop and error messages say so."""
  import jax.numpy as jnp

  def body(i):
    if i == 1:
      train.request_stop("SIGTERM")

  snapshot = lambda i: ({"w": jnp.full((2,), float(i))}, {"iteration": i})
  with train.Resumable(
    "rlhf", str(tmp_path), keep=2, every=100, log=lambda _: None, unit="iteration"
  ) as loop:
    with pytest.raises(
      train.GracefulStop, match="stopped after iteration 2; resume from checkpoint iteration 2"
    ):
      loop.run(0, 5, body, snapshot)
  with pytest.raises(train.GracefulStop, match="resume from checkpoint iteration 2 in"):
    train.check_stop("rlhf", "before the evaluation", str(tmp_path), unit="iteration")
  train.clear_stop()


def test_records_written_after_the_checkpoint_are_not_duplicated(reference, tmp_path):
  """Defect 4: a run killed after logging steps past its last checkpoint
  (here: its last checkpoint removed) resumes with exactly the reference's records."""
  _, ref_params, ref_records = reference
  run(tiny_config(ckpt_every=4), tmp_path)
  shutil.rmtree(tmp_path / "checkpoints" / str(STEPS))  # as if killed before saving STEPS
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 9, "split": "tr')  # and killed mid-write
  assert len(metrics.read_metrics(str(tmp_path))) == len(ref_records)  # readers cope
  state, _, lines = run(tiny_config(ckpt_every=4), tmp_path)
  assert any("at step 4" in line for line in lines), lines
  assert records(tmp_path) == ref_records
  raw = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert len(raw) == len(ref_records)  # the file itself, not only its reader
  assert_trees_equal(host(state.params), ref_params)


def test_read_metrics_keeps_one_record_per_split_and_step(tmp_path):
  lines = [
    {"step": 1, "split": "train", "loss": 3.0},
    {"step": 2, "split": "train", "loss": 2.0},
    {"step": 2, "split": "eval", "loss": 2.5},
    {"step": 2, "split": "train", "loss": 2.0},
  ]
  (tmp_path / "metrics.jsonl").write_text(
    "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "spl'
  )
  got = metrics.read_metrics(str(tmp_path))
  assert [(r["split"], r["step"]) for r in got] == [("train", 1), ("train", 2), ("eval", 2)]


# ---------------------------------------------------------------- 5: integrity


def flip_bits(step_dir, n=3):
  """Flips n bits in the middle of every data file of a checkpoint's state.

  Every file, not the largest: after OCDBT merges the per-process database into
  the checkpoint's root, the per-process b-tree files are no longer read, and for
  arrays small enough to be stored inline (under 1 KiB, as in the tiny config) the
  root's b-tree file holds all the data. Which file is largest varies run to run;
  damaging only that one once hit an unread file and the restore was (rightly)
  clean.
  """
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / "state") for f in fs]
  for path in [f for f in files if os.path.basename(os.path.dirname(f)) == "d"]:
    data = bytearray(open(path, "rb").read())
    for i in range(n):
      data[(len(data) // 2 + 7 * i) % len(data)] ^= 1 << i
    open(path, "wb").write(bytes(data))


def delete_metadata(step_dir):
  """Deletes Orbax's _METADATA of the checkpoint's state (the tree it restores by)."""
  os.remove(step_dir / "state" / "_METADATA")


@pytest.mark.parametrize("damage", [flip_bits, delete_metadata], ids=["bits", "metadata"])
def test_damaged_checkpoint_is_refused_naming_it(reference, tmp_path, damage):
  ref_dir, _, _ = reference
  workdir = tmp_path / "w"
  shutil.copytree(ref_dir, workdir)
  step_dir = workdir / "checkpoints" / str(STEPS)
  damage(step_dir)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    run(tiny_config(steps=2 * STEPS), workdir)
  message = str(e.value)
  assert str(step_dir) in message and "\n" not in message
  assert ckpt_lib.FALLBACK_ENV in message


def test_arrays_that_load_with_other_values_are_refused(reference, tmp_path):
  """Flipped bits in uncompressed array data load silently with other values;
  the checksums saved with the checkpoint catch them. (Simulated by changing the
  stored checksum of one array: restore sees a mismatch either way.)"""
  ref_dir, _, _ = reference
  workdir = tmp_path / "w"
  shutil.copytree(ref_dir, workdir)
  step_dir = workdir / "checkpoints" / str(STEPS)
  flip_checksum(step_dir, "w_qkv")
  with pytest.raises(ckpt_lib.CheckpointError, match="differ from the checksums") as e:
    run(tiny_config(steps=2 * STEPS), workdir)
  assert str(step_dir) in str(e.value) and "w_qkv" in str(e.value)


def flip_checksum(step_dir, array: str) -> None:
  """Changes the stored checksum of the first array whose path contains `array`."""
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  name = next(n for n in meta["checksums"] if array in n)
  meta["checksums"][name][0] ^= 1 << 7
  (step_dir / "meta" / "metadata").write_text(json.dumps(meta))


def test_restore_params_reads_the_params_alone(reference, tmp_path):
  """The optimizer's moments are not read (a changed checksum of one of them
  goes unnoticed, where a full restore refuses it); the params still are."""
  ref_dir, ref_params, _ = reference
  config = tiny_config()
  model, example = make_task(config).model, make_task(config).example_batch
  params, step = train.restore_params(str(ref_dir), config, model, example)
  assert step == STEPS
  assert_trees_equal(host(params), ref_params)

  workdir = tmp_path / "moments"
  shutil.copytree(ref_dir, workdir)
  flip_checksum(workdir / "checkpoints" / str(STEPS), "opt_state")
  params, _ = train.restore_params(str(workdir), config, model, example)
  assert_trees_equal(host(params), ref_params)
  with pytest.raises(ckpt_lib.CheckpointError, match="opt_state"):
    run(tiny_config(steps=2 * STEPS), workdir)

  workdir = tmp_path / "params"
  shutil.copytree(ref_dir, workdir)
  flip_checksum(workdir / "checkpoints" / str(STEPS), "params")
  with pytest.raises(ckpt_lib.CheckpointError, match="differ from the checksums"):
    train.restore_params(str(workdir), config, model, example)


def test_checksums_equal_a_numpy_computation():
  """Per array: the uint32 sum of its bit patterns and the sum weighted by
  (i * 2654435761) | 1, both modulo 2**32; skipped leaves are left out."""
  rng = np.random.default_rng(0)
  x = {
    "w": rng.standard_normal((37, 11)).astype(np.float32),
    "h": rng.standard_normal(9).astype(np.float16),
    "n": np.arange(-3, 4, dtype=np.int32),
    "skipped": ckpt_lib.SKIP,
  }
  sums, nonfinite = ckpt_lib.summarize(x)
  assert sorted(sums) == ["['h']", "['n']", "['w']"] and nonfinite == []
  for name in ("w", "h", "n"):
    u = x[name].ravel().view({2: np.uint16, 4: np.uint32}[x[name].itemsize]).astype(np.uint64)
    weights = (np.arange(u.size, dtype=np.uint64) * 2654435761 % 2**32) | 1
    want = [int(u.sum() % 2**32), int((u * weights % 2**32).sum() % 2**32)]
    assert sums[f"['{name}']"] == want, name


def test_fallback_resumes_from_the_previous_good_checkpoint(reference, tmp_path, monkeypatch):
  _, ref_params, ref_records = reference
  run(tiny_config(ckpt_every=4), tmp_path)
  flip_bits(tmp_path / "checkpoints" / str(STEPS))
  monkeypatch.setenv(ckpt_lib.FALLBACK_ENV, "1")
  state, _, lines = run(tiny_config(ckpt_every=4), tmp_path)
  assert any("Falling back" in line for line in lines), lines
  assert any("resumed" in line and "at step 4" in line for line in lines), lines
  assert os.path.isdir(tmp_path / "checkpoints.corrupt" / str(STEPS))
  assert records(tmp_path) == ref_records
  assert_trees_equal(host(state.params), ref_params)


def test_checksums_do_not_depend_on_the_layout():
  """Integer sums are exact in any order: the same arrays on 1 or 8 devices."""
  x = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 16)), "b": np.arange(5, dtype=np.int32)}
  mesh = jax.make_mesh((8,), ("d",))
  sharded = dict(
    x, w=jax.device_put(x["w"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  )
  assert ckpt_lib.summarize(x) == ckpt_lib.summarize(sharded)
  flipped = np.array(x["w"])
  flipped.view(np.uint32)[3, 5] ^= 1 << 20
  assert ckpt_lib.summarize(dict(x, w=flipped))[0] != ckpt_lib.summarize(x)[0]


# ---------------------------------------------------------------- 8: a full disk


def test_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(
  reference, tmp_path, monkeypatch, caplog, capsys
):
  """With keep_checkpoints=1 too: the previous checkpoint is deleted only once
  the new one is complete, so the failed save leaves it to resume from."""
  _, ref_params, ref_records = reference
  config = tiny_config(ckpt_every=4, keep_checkpoints=1)
  run(tiny_config(steps=4, ckpt_every=4, keep_checkpoints=1), tmp_path)

  def full(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

  monkeypatch.setattr(epath.Path, "write_text", full)  # Orbax's metadata files
  with pytest.raises(ckpt_lib.DiskFullError) as e:
    run(config, tmp_path)
  monkeypatch.undo()
  message, directory = str(e.value), tmp_path / "checkpoints"
  assert message.startswith("The disk is full") and "\n" not in message
  assert f"{directory / str(STEPS)} " in message and f"checkpoint step 4 in {directory}" in message
  orbax_errors = [r for r in caplog.records if "orbax" in r.pathname and r.levelno >= 40]
  assert not orbax_errors, orbax_errors[0].getMessage()  # one traceback per thread, unfiltered
  with pytest.raises(SystemExit):
    cli._fatal(e.value)  # what a command prints
  fatal = capsys.readouterr().err.splitlines()[0]
  assert fatal.startswith("FATAL OSError: the disk is full writing") and "step 4" in fatal
  state, _, lines = run(config, tmp_path)
  assert any("at step 4" in line for line in lines), lines
  assert records(tmp_path) == ref_records
  assert_trees_equal(host(state.params), ref_params)


def test_a_full_disk_is_recognised_however_it_is_reported():
  """TensorStore (the array data) says it in a ValueError's text; Orbax wraps
  errors of its threads; a quota is as full as a disk."""
  tensorstore = ValueError("DATA_LOSS: writing d/1: No space left on device")
  assert ckpt_lib.disk_full(tensorstore) == errno.ENOSPC
  wrapped = RuntimeError("save failed")
  assert ckpt_lib.disk_full(wrapped) is None
  wrapped.__cause__ = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "x")
  assert ckpt_lib.disk_full(wrapped) == errno.EDQUOT


# ---------------------------------------------------------------- 6: NaN never saved


@pytest.mark.parametrize("ckpt_every", [1, 3])
def test_huge_learning_rate_leaves_no_nan_checkpoint(tmp_path, ckpt_every):
  config = tiny_config(lr=1e40, warmup_steps=0, steps=4, ckpt_every=ckpt_every, log_every=100)
  with pytest.raises(train.NonFiniteLossError) as e:
    run(config, tmp_path)
  step = latest(tmp_path)
  if step is None:
    assert "there is no checkpoint yet" in str(e.value)
  else:
    assert f"last good checkpoint is step {step}" in str(e.value)
    c = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
    task = make_task(config)
    state, _ = c.restore(
      train.abstract_state(task, train.make_optimizer(config.train), _mesh(), config.seed)
    )
    c.close()
    assert train.params_finite(state.params)


def _mesh():
  from test_train import mesh_of

  return mesh_of((2, 2, 2))


def test_non_finite_loss_names_no_checkpoint_when_there_is_none(tmp_path):
  config = tiny_config(ckpt_every=100)
  with pytest.raises(train.NonFiniteLossError, match="there is no checkpoint yet"):
    run(config, tmp_path, poisoned_task(config, 1))


# ---------------------------------------------------------------- 7: lock, config changes


def test_workdir_lock_refuses_a_live_process_and_takes_over_a_dead_one(tmp_path):
  config = tiny_config()
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock = {"pid": sleeper.pid, "host": socket.gethostname()}
    (tmp_path / runs.LOCK_FILE).write_text(json.dumps(lock))
    with pytest.raises(FileExistsError, match=rf"in use by pid {sleeper.pid}"):
      runs.prepare_stage(config, str(tmp_path), validate=lambda c: None)
  finally:
    sleeper.kill()
    sleeper.wait()
  with runs.prepare_stage(config, str(tmp_path), validate=lambda c: None) as stage:
    held = json.loads((tmp_path / runs.LOCK_FILE).read_text())
    assert held["pid"] == os.getpid() and stage.workdir == str(tmp_path)
  assert not (tmp_path / runs.LOCK_FILE).exists()


def test_changed_config_on_resume_is_named_unless_safe(tmp_path):
  with runs.prepare_stage(tiny_config(), str(tmp_path), validate=lambda c: None):
    pass
  changed = tiny_config(lr=1e-2)
  changed.model.d_ff = 64
  with pytest.raises(ValueError, match=r"config\.model\.d_ff \(32 -> 64\).*config\.train\.lr"):
    runs.prepare_stage(changed, str(tmp_path), validate=lambda c: None)
  assert config_lib.load(str(tmp_path / "config.json")).train.lr == tiny_config().train.lr
  safe = tiny_config(steps=2 * STEPS, log_every=3, ckpt_every=5)
  safe.mesh.num_devices = 1
  with runs.prepare_stage(safe, str(tmp_path), validate=lambda c: None) as stage:
    assert stage.config.train.steps == 2 * STEPS


# ---------------------------------------------------------------- 8, 9, 10: messages and results


def test_graceful_stop_checkpoints_do_not_count_towards_keep(tmp_path):
  state = {"w": np.ones(3, np.float32)}
  c = ckpt_lib.Checkpointer(str(tmp_path), keep=2, every=10, async_save=False)
  for step, periodic in ((10, True), (20, True), (25, False)):
    c.save(step, state, periodic=periodic)
  assert c._manager.all_steps() == [10, 20, 25]  # the stop kept both periodic ones
  c.save(30, state)
  assert c._manager.all_steps() == [20, 30]
  c.close()


def test_reward_model_refuses_a_pretraining_run_as_sft(tmp_path):
  from configs import reward_model as rm_configs
  from gptjax.reward_model import training as rm_training

  config = rm_configs.get_config("tiny")
  config.mesh.num_devices = 1
  pretrain = REPO / "tests" / "fixtures" / "pre_restructure" / "pretrain"
  with pytest.raises(ValueError, match="is not an SFT run"):
    rm_training.run(config, str(tmp_path / "rm"), str(pretrain), log=lambda _: None)


def test_cache_dir_that_is_a_file_is_named(tmp_path):
  from configs import pretrain as pretrain_configs
  from gptjax import pretraining

  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match=rf"--cache_dir={blocker} is a file"):
    pretraining.run(pretrain_configs.get_config("tiny"), str(tmp_path / "w"), str(blocker))


BAD_INPUTS = [
  # (why, extra args, what the one FATAL line must contain)
  ("missing config file", ["--config=configs/nope.py:tiny"], "nope.py"),
  ("vocab_size too small", ["--config.model.vocab_size=100"], "config.model.vocab_size"),
  ("mesh.tensor=3 on one device", ["--config.mesh.tensor=3"], "config.mesh"),
]


@pytest.mark.slow
@pytest.mark.parametrize("why, args, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_fatal_line(tmp_path, data_cache_dir, why, args, expected):
  config = [a for a in args if a.startswith("--config=")] or ["--config=configs/pretrain.py:tiny"]
  proc = run_entry_point(
    "experiments.pretrain",
    *config,
    *[a for a in args if not a.startswith("--config=")],
    f"--workdir={tmp_path / 'w'}",
    f"--cache_dir={data_cache_dir}",
    "--config.train.measure_peak=False",
    timeout=300,
  )
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL")]
  assert len(fatal) == 1 and expected in fatal[0], proc.stderr[-2000:]


# ---------------------------------------------------------------- signals in real processes


def start(module, args, workdir, log_path, env=None):
  """`python -m module args --workdir=workdir` on one CPU device, output to log_path."""
  env = {k: v for k, v in dict(os.environ, **(env or {})).items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  log = open(log_path, "w")
  proc = subprocess.Popen(
    [sys.executable, "-m", module, *args, f"--workdir={workdir}"],
    cwd=REPO,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
    # As a shell starts a background job: SIGINT ignored; the run must still stop on it.
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
  )
  return proc, log


def finish(module, args, workdir, log_path, env=None):
  """Runs the command to the end; asserts it succeeds."""
  proc, log = start(module, args, workdir, log_path, env)
  code = proc.wait(timeout=900)
  log.close()
  assert code == 0, log_path.read_text()[-3000:]


def stop_at_random_moments(module, args, workdir, tmp_path, moments, signals, seed, env=None):
  """Runs the command in `workdir` once per moment, each stopped by a signal
  (drawn from `signals`) a random delay after the moment's marker, then once to
  the end. A moment is (ready(log text) -> bool, max delay in s); ready must
  only hold once the signal handlers are installed. Each stop must exit 130
  without a traceback, saying which checkpoint a rerun resumes from (none
  before the first step), and that checkpoint must exist. Returns the exit
  codes (a stop that comes too late finishes the run: 0, and no more tries)."""
  rng = random.Random(seed)
  outcomes = []
  for i, (ready, spread) in enumerate(moments):
    log_path = tmp_path / f"{workdir.name}-{i}.txt"
    proc, log = start(module, args, workdir, log_path, env)
    text = log_path.read_text
    while not ready(text()) and proc.poll() is None:
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, spread))
    proc.send_signal(rng.choice(signals))
    code = proc.wait(timeout=900)
    log.close()
    out = text()
    assert code in (0, 130) and "Traceback" not in out, (code, out[-3000:])
    outcomes.append(code)
    if code == 0:
      return outcomes
    assert "interrupted: " in out, out[-2000:]
    resume = r"(resume from checkpoint (?:step|iteration) (\d+)|there is no checkpoint)"
    said = re.search(rf": stopped [^;]*; {resume}", out)
    assert said, out[-2000:]
    if said.group(2) is not None:  # the checkpoint it names is there, and the newest
      assert int(said.group(2)) == latest(workdir), out[-2000:]
    else:
      assert latest(workdir) is None, out[-2000:]
  finish(module, args, workdir, tmp_path / f"{workdir.name}-last.txt", env)
  return outcomes


TINY = [
  "--config=configs/pretrain.py:tiny",
  "--config.train.steps=120",
  "--config.train.log_every=4",
  "--config.train.eval_every=60",
  "--config.train.ckpt_every=1000",
  "--config.train.measure_peak=False",
]


@pytest.mark.slow
def test_signals_at_random_moments_always_save_and_resume_bit_identically(tmp_path, data_cache_dir):
  """SIGTERM/SIGINT at random moments of a tiny pretraining run (start-up and
  compilation included): every stop exits 130 without a traceback, and the run
  finished by reruns equals an uninterrupted one, parameters and records."""
  ref_dir, work = tmp_path / "ref", tmp_path / "stopped"
  args = [*TINY, f"--cache_dir={data_cache_dir}"]
  finish("experiments.pretrain", args, ref_dir, tmp_path / "ref.txt")
  # Odd tries: during start-up (data, compilation); even ones: once training is under way.
  moments = [(lambda t, m=m: m in t, 3.0) for m in ["[pretrain] step", "[data]"] * 2]
  outcomes = stop_at_random_moments(
    "experiments.pretrain", args, work, tmp_path, moments, (signal.SIGTERM, signal.SIGINT), 16
  )
  assert outcomes.count(130) >= 3, outcomes
  assert records(work) == records(ref_dir)
  a, b = runs.load_run(str(ref_dir)), runs.load_run(str(work))
  assert a.step == b.step == 120
  assert_trees_equal(host(b.params), host(a.params))


def rlhf_outputs(workdir) -> tuple:
  """What an RLHF run leaves: records, eval.json, the exported policy and the
  final checkpoint's checksums (exact sums of the bits of every array of the
  state: policy, critic, reward model, optimizer states)."""
  step = latest(workdir)
  meta = json.loads((workdir / "checkpoints" / str(step) / "meta" / "metadata").read_text())
  evaluation = json.dumps(json.loads((workdir / "eval.json").read_text()), sort_keys=True)
  policy = host(runs.load_run(str(workdir / "policy")).params)
  return records(workdir), evaluation, meta, policy


@pytest.mark.slow
def test_rlhf_stopped_at_random_moments_resumes_bit_identically(
  sft_run, reward_model_run, tmp_path, data_cache_dir
):
  """SIGTERM at random moments of a tiny RLHF stage, during start-up (restoring,
  building the state, compiling) and mid-run: each stop exits 130 at an
  iteration boundary with its checkpoint, and the run finished by reruns leaves
  exactly an uninterrupted run's state, records, exported policy and eval.json."""
  args = [
    "--config=configs/rlhf.py:tiny",
    f"--sft={sft_run['sft']}",
    f"--reward_model={reward_model_run}",
    "--config.ppo.iterations=6",
    "--config.ppo.rollout_batch=8",
    "--config.ppo.minibatches=2",
    "--config.ppo.epochs=2",
    "--config.train.log_every=1",
    "--config.eval.n_per_family=1",
    "--config.eval.kl_samples=0",
    "--config.eval.n_boot=100",
    "--config.eval.ptx_eval_batches=1",
  ]
  # One compilation for all runs; the alignment tax's pretraining data in the test cache.
  env = {
    "GPTJAX_CACHE": str(data_cache_dir),
    "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  ref_dir, work = tmp_path / "ref", tmp_path / "stopped"
  finish("experiments.rlhf", args, ref_dir, tmp_path / "ref.txt", env)
  # Start-up: the workdir is locked once the SFT and reward models are loaded
  # (the handlers are installed before); mid-run: after an iteration's line.
  started = lambda t: os.path.exists(work / runs.LOCK_FILE)
  mid_run = lambda t: "[rlhf] iter" in t
  moments = [(started, 2.0), (mid_run, 1.0), (started, 4.0), (mid_run, 1.0)]
  outcomes = stop_at_random_moments(
    "experiments.rlhf", args, work, tmp_path, moments, (signal.SIGTERM,), 16, env
  )
  assert outcomes.count(130) >= 3, outcomes
  got, want = rlhf_outputs(work), rlhf_outputs(ref_dir)
  assert got[0] == want[0]  # records
  assert got[1] == want[1]  # eval.json
  assert got[2] == want[2]  # the checkpoint: iteration, beta, checksums
  assert_trees_equal(got[3], want[3])


def test_non_utf8_files_in_a_corpus_directory_are_counted(tmp_path, capsys):
  from gptjax.data import sources

  (tmp_path / "a.txt").write_text("plain text\n")
  (tmp_path / "b.txt").write_bytes("caf\xe9 latin-1\n".encode("latin-1"))
  (tmp_path / "c.txt").write_bytes(b"\x00\x01binary")
  docs = list(sources.dir_documents(f"dir:{tmp_path}", None))
  assert [d[0] for d in docs] == ["a.txt"]
  out = capsys.readouterr().out
  assert "skipped 2 of 3 files that are not UTF-8" in out and "b.txt" in out


@pytest.mark.slow  # ~4 s of compilation: the fast subset stays under 5 minutes
def test_a_stop_during_an_evaluation_takes_effect_within_a_batch(tiny_tokenizer, tmp_path):
  """An evaluator with a stop check raises GracefulStop after the batch in
  progress (not after the whole evaluation); training-time samples are never
  interrupted (their loop saves first, then stops)."""
  from configs import sft as sft_configs
  from gptjax import evaluation
  from gptjax.tasks import world as world_lib

  model, params = _random_chat_model(tiny_tokenizer)
  cfg = sft_configs.get_config("tiny").eval
  cfg.n_per_family, cfg.batch_size, cfg.max_new_tokens = 2, 2, 4
  batches = []

  def stop_check():
    batches.append(len(batches))
    if len(batches) == 2:
      train.request_stop("SIGTERM")
    train.check_stop("rlhf", "during the final evaluation", str(tmp_path))

  world = world_lib.make_world(0)
  families = ("count", "sort", "reverse", "brackets", "format")
  ev = evaluation.Evaluator(
    model, tiny_tokenizer, world, cfg, families=families, stop_check=stop_check
  )
  with pytest.raises(train.GracefulStop, match=r"SIGTERM: stopped during the final evaluation"):
    ev.judgements(params, "chat")  # 2 prompts a batch: stops after the second of 10
  assert len(batches) == 2
  assert len(ev.chat_samples(params, ["What is 2 plus 2?"] * 4)) == 4  # not interrupted


def _random_chat_model(tokenizer):
  from gptjax import model as model_lib

  config = config_lib.copy(tiny_config())
  config.model.vocab_size = tokenizer.vocab_size
  config.model.max_len = 128
  model = model_lib.build(config)
  return model, model.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]


def test_a_stop_while_sampling_comparisons_takes_effect_within_a_batch(tiny_tokenizer, tmp_path):
  """The reward model's and best-of-n's sampling phases (minutes, nothing to
  save) end on a stop request after the batch in progress."""
  from gptjax.reward_model import comparisons as comp_lib

  model, params = _random_chat_model(tiny_tokenizer)
  policy = runs.LoadedRun(None, model, params, tiny_tokenizer, 0, str(tmp_path))
  settings = comp_lib.ComparisonSettings(
    k=2, max_new_tokens=4, labeler_noise=None, target_agreement=0.7, batch_size=2
  )
  calls = []

  def stop_check():
    calls.append(1)
    train.request_stop("SIGINT")
    train.check_stop("best_of_n", "while sampling", str(tmp_path))

  with pytest.raises(train.GracefulStop, match="SIGINT: stopped while sampling"):
    comp_lib.sample_responses(
      policy, ["a", "b", "c"], settings, rng=jax.random.PRNGKey(0), stop_check=stop_check
    )
  assert calls == [1]  # after the first of three batches
  train.clear_stop()
  _, responses, _ = comp_lib.sample_responses(
    policy, ["a", "b", "c"], settings, rng=jax.random.PRNGKey(0)
  )
  assert len(responses) == 3 and all(len(r) == 2 for r in responses)
