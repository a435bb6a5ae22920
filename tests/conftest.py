import os
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
  from gptjax.tokenizer import load_or_train_tokenizer
  return load_or_train_tokenizer(data_config,
                                 tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_pipeline(data_config, tiny_tokenizer, data_cache_dir):
  """The English + code `Pipeline` of `data_config` (T = 64)."""
  from gptjax.data import Pipeline
  return Pipeline(data_config, tiny_tokenizer, data_cache_dir)
