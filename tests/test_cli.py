"""Bad command lines fail at start with one line naming the problem, not a traceback."""

import time

import pytest
from conftest import run_entry_point


@pytest.mark.parametrize(
  "module,args,expected",
  [
    (
      "experiments.pretrain",
      ["--config=configs/pretrain.py:tiny", "--config.model.n_layerz=4"],
      ['--config.model.n_layerz=4: unknown config field n_layerz', 'did you mean "n_layer"'],
    ),
    (
      "experiments.pretrain",
      ["--config=configs/pretrain.py:tiny", "--config.model.n_layer=abc"],
      ["--config.model.n_layer=abc", "invalid literal for int()"],
    ),
    ("experiments.pretrain", ["--config=configs/pretrain.py:tinyy"], ["Unknown preset 'tinyy'"]),
    (
      "experiments.pretrain",
      ["--config=configs/pretrain.py:tiny+lama"],
      ["Unknown preset 'tiny+lama'", "+world and/or +llama"],
    ),
    (
      "experiments.rlhf",
      ["--config=configs/rlhf.py:tiny", "--config.ppo.betaa=0.1"],
      ["--config.ppo.betaa=0.1: unknown config field betaa", 'did you mean "beta"'],
    ),
  ],
)
def test_bad_override_is_one_clear_line(module, args, expected, tmp_path):
  proc = run_entry_point(module, *args, f"--workdir={tmp_path / 'w'}", timeout=120)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  first = proc.stderr.splitlines()[0]
  assert first.startswith("FATAL Flags parsing error:")
  for piece in expected:
    assert piece in first, first
  assert not (tmp_path / "w").exists()  # nothing was started, nothing written


CONFIGS = ["pretrain", "sft", "reward_model", "rlhf", "pipeline", "scaling_sweep"]


def _leaves(node, prefix=""):
  for k, v in node.items():
    if hasattr(v, "items"):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


@pytest.mark.parametrize("name", CONFIGS)
def test_sequence_fields_are_tuples_so_the_command_line_can_override_them(name):
  """ml_collections overrides tuples from the command line but refuses lists."""
  import importlib

  module = importlib.import_module(f"configs.{name}")
  for preset in module.PRESETS:
    lists = [k for k, v in _leaves(module.get_config(preset)) if isinstance(v, list)]
    assert not lists, f"configs/{name}.py:{preset}: list fields {lists}"


def test_tuple_field_override_parses():
  from absl import flags
  from ml_collections import config_flags

  for value, expected in [("(0.125,)", (0.125,)), ("()", ())]:
    argv = [
      "prog",
      "--config=configs/reward_model.py:tiny",
      f"--config.eval.data_fractions={value}",
    ]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
      "config", "configs/reward_model.py:tiny", flag_values=fv, sys_argv=argv
    )
    fv(argv)
    assert fv.config.eval.data_fractions == expected


def test_user_error_is_one_line_without_traceback(tmp_path):
  proc = run_entry_point(
    "experiments.reward_model",
    "--config=configs/reward_model.py:tiny",
    f"--sft={tmp_path / 'missing'}",
    f"--workdir={tmp_path / 'w'}",
    timeout=120,
  )
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  fatal = [l for l in proc.stderr.splitlines() if l.startswith("FATAL")]
  assert fatal == [
    f"FATAL FileNotFoundError: {tmp_path / 'missing'} has no config.json: "
    "is it a gptjax run's --workdir?"
  ], proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_stop_signal_saves_a_checkpoint_and_exits_130(tmp_path, data_cache_dir, signame):
  """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) in the middle of
  training: checkpoint of the current step, exit 130, no traceback."""
  import os
  import signal
  import subprocess
  import sys
  import time

  from conftest import REPO

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  workdir, out_path, err_path = tmp_path / "w", tmp_path / "out.txt", tmp_path / "err.txt"
  # Output to files, not pipes: a child blocked on a full stderr pipe never trains.
  with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
    proc = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=configs/pretrain.py:tiny",
        f"--workdir={workdir}",
        f"--cache_dir={data_cache_dir}",
        "--config.train.steps=100000",
        "--config.train.log_every=5",
        "--config.train.ckpt_every=100000",
        "--config.train.eval_every=100000",
        "--config.train.measure_peak=False",
      ],
      cwd=REPO,
      env=env,
      stdout=out_f,
      stderr=err_f,
      # Started as a shell starts a background job: SIGINT ignored. The run
      # must still stop gracefully on it.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.time() + 600
    while "[pretrain] step" not in out_path.read_text():  # training is under way
      assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-2000:]
      time.sleep(0.5)
    proc.send_signal(getattr(signal, signame))
    proc.wait(timeout=600)
  out, err = out_path.read_text(), err_path.read_text()
  assert proc.returncode == 130, (proc.returncode, out[-1000:], err[-2000:])
  assert "Traceback" not in err and "interrupted" in err, err[-2000:]
  assert "saving a checkpoint before exiting" in out, out[-2000:]
  steps = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
  assert steps and min(steps) >= 5, steps


def test_architecture_switches_pass_the_field_check():
  """`+llama` (and a converted model's config) sets gptjax.model.ARCH_DEFAULTS
  fields that the bare preset lacks: they are checked as fields of any model
  section, while a misspelt one still fails."""
  from configs import pretrain as pretrain_configs
  from gptjax import cli, model as model_lib

  config = pretrain_configs.get_config("tiny+world+llama")
  assert cli.checked(config, pretrain_configs.get_config) is config
  assert set(model_lib.ARCH_DEFAULTS) <= set(config.model)
  assert model_lib.build(config).cfg.kv_heads == config.model.n_head // 2
  config.model.norm = "batchnorm"
  with pytest.raises(ValueError, match=r"config.model.norm='batchnorm'; allowed: \['layernorm'"):
    model_lib.build(config)
  with config.unlocked():
    config.model.n_kv_heads = 1
  with pytest.raises(ValueError, match="n_kv_heads"):
    cli.checked(config, pretrain_configs.get_config)


@pytest.mark.slow
def test_stop_signals_during_shutdown_do_not_kill_the_finished_run(tmp_path, data_cache_dir):
  """SIGINT after the run printed `done:`: Python restores the default handlers
  while it shuts down, so one arriving then killed the process (exit -2, read
  by a scheduler as a crash, 1 of 8 random-moment stops in CI); the entry
  points ignore stop signals once their work is saved. Hundreds are sent here."""
  import signal
  import subprocess
  import sys

  from conftest import REPO

  proc = subprocess.Popen(
    [sys.executable, "-m", "experiments.pretrain", "--config=configs/pretrain.py:tiny",
     f"--workdir={tmp_path / 'w'}", f"--cache_dir={data_cache_dir}", "--config.train.steps=3",
     "--config.train.eval_every=3", "--config.train.ckpt_every=3",
     "--config.train.measure_peak=False"],
    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
  )  # fmt: skip
  for line in proc.stdout:
    if line.startswith("done:"):
      break
  sent = 0
  while proc.poll() is None:
    proc.send_signal(signal.SIGINT)
    sent += 1
    time.sleep(0.002)
  assert proc.returncode == 0, (proc.returncode, sent)
