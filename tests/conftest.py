import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess
import sys
from pathlib import Path

import pytest

# data fixtures
#
# A tiny tokenizer (vocab 512) and pipeline on capped English + code, built
# once per test session in a temporary directory (a few seconds in all).


@pytest.fixture(scope="session")
def data_config():
  """The tiny pretraining config with small caps: fast to prepare."""
  from configs.pretrain import get_config

  config = get_config("tiny")
  config.data.max_chars = 120_000
  config.data.tokenizer_chars = 100_000
  config.data.tfds_dir = ""
  return config


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory):
  """Prepared datasets and token streams of the test session."""
  return tmp_path_factory.mktemp("gptjax_cache")


@pytest.fixture(scope="session")
def tiny_tokenizer(data_config, tmp_path_factory):
  """A 512-piece tokenizer trained on `data_config`'s mixture."""
  from gptjax.data.tokenizer_corpus import load_or_train_tokenizer

  return load_or_train_tokenizer(data_config, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_pipeline(data_config, tiny_tokenizer, data_cache_dir):
  """The English + code `Pipeline` of `data_config` (T = 64)."""
  from gptjax.data import Pipeline

  return Pipeline(data_config, tiny_tokenizer, data_cache_dir)


# train fixtures
#
# Train-loop tests call `train.run` several times with one tiny config. Each
# call jits fresh closures, so without a cache every call recompiles the same
# programs (seconds each on a CPU). JAX's persistent compilation cache, in a
# temporary directory, makes the identical programs compile once.


@pytest.fixture(scope="module")
def jax_compilation_cache(tmp_path_factory):
  """Enables JAX's persistent compilation cache for one test module."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  before = {name: getattr(jax.config, name) for name in names}
  jax.config.update(
    "jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_compilation_cache"))
  )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()  # JAX decides once, at its first compilation
  yield
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


# sft fixtures
#
# One tiny pretrain (+ the synthetic world) and SFT run per test session, in
# subprocesses on a single CPU device (as a user would run them), shared by
# the slow SFT and chat tests.

REPO = Path(__file__).resolve().parent.parent


def run_entry_point(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  """`python -m <module> <args>` from the repository root, on one CPU device."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  return proc


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, data_cache_dir):
  """{'pretrain': Path, 'sft': Path}: tiny+world pretrained 150 steps, then SFT 250 steps."""
  root = tmp_path_factory.mktemp("sft_run")
  pretrain, sft = root / "pretrain", root / "sft"
  steps = [
    "--config.train.steps=150",
    "--config.train.eval_every=150",
    "--config.train.ckpt_every=150",
    "--config.train.measure_peak=False",
  ]
  proc = run_entry_point(
    "experiments.pretrain",
    "--config=configs/pretrain.py:tiny+world",
    f"--workdir={pretrain}",
    f"--cache_dir={data_cache_dir}",
    *steps,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_entry_point(
    "experiments.sft",
    "--config=configs/sft.py:tiny",
    f"--pretrained={pretrain}",
    f"--workdir={sft}",
    "--config.sft.n_demos=3000",
    "--config.train.steps=250",
    "--config.train.eval_every=250",
    "--config.train.ckpt_every=250",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {"pretrain": pretrain, "sft": sft}


@pytest.fixture(scope="session")
def reward_model_run(sft_run, tmp_path_factory):
  """A small reward model (32 prompts) on the session's tiny SFT run, shared by the
  DPO, best-of-n and RLHF reliability tests (its quality does not matter there)."""
  rm = tmp_path_factory.mktemp("reward_model")
  proc = run_entry_point(
    "experiments.reward_model",
    "--config=configs/reward_model.py:tiny",
    f"--sft={sft_run['sft']}",
    f"--workdir={rm}",
    "--config.comparisons.n_prompts=32",
    "--config.comparisons.n_heldout=16",
    "--config.rm.epochs=1",
    "--config.eval.data_fractions=()",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return rm
