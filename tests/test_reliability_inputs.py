"""Reliability (issue 16), the inputs side: a corpus too small for its splits or
the context, the leftovers of a killed data build, a pipeline config change
(the replaced stage is kept, not deleted) and the chat's too-long message.

All fast: small directory corpora prepared under tmp_path, the fixture
tokenizer, stages that write one file.
"""

import os
import threading

import ml_collections
import numpy as np
import pytest
from conftest import REPO

from configs import pretrain as pretrain_configs
from gptjax.data import builder, packing
from gptjax.pipeline import stages as pipeline_lib
from gptjax.tokenizer import Tokenizer

TOKENIZER = REPO / "tests" / "fixtures" / "pre_restructure" / "pretrain" / "tokenizer.model"


def corpus(root, n_files, words=150):
  """n_files documents of plain words under root (deterministic)."""
  rng = np.random.default_rng(0)
  vocab = "the a cat dog runs over under blue red small big house tree river".split()
  root.mkdir(parents=True, exist_ok=True)
  for i in range(n_files):
    (root / f"f{i:03d}.txt").write_text(" ".join(rng.choice(vocab, words)) + "\n")
  return root


def data_config(tmp_path, root, **model):
  c = pretrain_configs.get_config("tiny")
  c.data.mixture = {f"dir:{root}": 1.0}
  c.data.tfds_dir = str(tmp_path / "tfds")
  c.model.update(model)
  return c


# ---------------------------------------------------------------- a corpus too small


def test_corpus_without_validation_documents_is_one_clear_error(tmp_path):
  """One file is one document: the hash split sends it to train, and tfds used
  to fail later with a traceback ('No examples were yielded')."""
  root = corpus(tmp_path / "one", 1)
  config = data_config(tmp_path, root)
  with pytest.raises(ValueError) as e:
    builder.prepare_documents(f"dir:{root}", config)
  message = str(e.value)
  assert f"Source 'dir:{root}' has no validation documents" in message, message
  assert "data.val_fraction=0.05" in message and "\n" not in message
  config_dir = builder.tfds_data_dir(config) / "gptjax_documents"
  assert not list(config_dir.glob(f"*/{builder.INCOMPLETE_PREFIX}*"))  # nothing left behind


def test_corpus_shorter_than_the_context_says_so_with_the_numbers(tmp_path):
  """Rows are windows of T + 1 tokens drawn with replacement, so any batch size
  works once each stream holds T + 1 tokens; a shorter stream is named."""
  tokenizer = Tokenizer.load(TOKENIZER)
  root = corpus(tmp_path / "small", 40)
  config = data_config(tmp_path, root, vocab_size=tokenizer.vocab_size, max_len=2048)
  with pytest.raises(ValueError) as e:
    packing.Pipeline(config, tokenizer, tmp_path / "cache")
  message = str(e.value)
  assert f"Source 'dir:{root}' has only" in message and "fewer than model.max_len + 1 = 2049" in (
    message
  )
  config.model.max_len = 16  # the same corpus is enough for a shorter context
  pipeline = packing.Pipeline(config, tokenizer, tmp_path / "cache")
  assert pipeline.train_batch(0, 512)["tokens"].shape == (512, 16)


# ---------------------------------------------------------------- a killed data build


def test_a_killed_builds_leftovers_are_deleted_by_the_next_build(tmp_path, capsys):
  """tfds builds in incomplete.XXXXXX_1.0.0/ and renames it when done; a kill -9
  leaves it. The next build of the source (under its build lock) deletes it."""
  root = corpus(tmp_path / "docs", 30)
  spec, config = f"dir:{root}", data_config(tmp_path, root)
  config_dir = builder.tfds_data_dir(config) / "gptjax_documents"
  config_dir /= builder.config_name(spec, config)
  left = config_dir / f"{builder.INCOMPLETE_PREFIX}Q7R2ZX_{builder.VERSION}"
  left.mkdir(parents=True)
  (left / "gptjax_documents-train.array_record-00000-of-00001").write_bytes(b"\0" * 1000)
  docs = builder.prepare_documents(spec, config)
  assert not left.exists()
  assert "deleted 1 unfinished earlier build(s)" in capsys.readouterr().out
  assert len(docs["train"]) + len(docs["validation"]) == 30
  assert sorted(p.name for p in config_dir.iterdir()) == [builder.LOCK_FILE, builder.VERSION]


def test_a_build_in_progress_is_waited_for_and_left_alone(tmp_path):
  """A second process preparing the same source waits for the first's lock
  instead of deleting its incomplete folder or building beside it."""
  root = corpus(tmp_path / "docs", 30)
  spec, config = f"dir:{root}", data_config(tmp_path, root)
  config_dir = builder.tfds_data_dir(config) / "gptjax_documents"
  config_dir /= builder.config_name(spec, config)
  second = threading.Thread(target=builder.prepare_documents, args=(spec, config))
  with builder.building(config_dir):  # "the first process", mid-build
    in_progress = config_dir / f"{builder.INCOMPLETE_PREFIX}AB12CD_{builder.VERSION}"
    in_progress.mkdir()
    second.start()
    second.join(1.0)
    assert second.is_alive() and in_progress.is_dir()  # waiting, nothing touched
  second.join(120)
  assert not second.is_alive() and builder.documents_builder(spec, config).is_prepared()


# ---------------------------------------------------------------- a pipeline config change


def _stage(name, value, after=()):
  def run(d):
    with open(os.path.join(d, "out.txt"), "w") as f:
      f.write(str(value))

  return pipeline_lib.Stage(name, ml_collections.ConfigDict({"value": value}), run, after)


def test_changed_config_reruns_but_keeps_the_replaced_stages(tmp_path):
  """The documented rerun after a config change, without deleting finished work:
  the stage and the stages after it are moved to replaced/, and each says where."""
  quiet = lambda _: None
  first = pipeline_lib.run_stages([_stage("a", 1), _stage("b", 2, ("a",))], tmp_path, quiet)
  lines = []
  pipeline_lib.run_stages([_stage("a", 10), _stage("b", 2, ("a",))], tmp_path, lines.append)
  for name, value in (("a", "1"), ("b", "2")):
    aside = tmp_path / "replaced" / f"{name}-{first[name]['fingerprint']}"
    assert (aside / "out.txt").read_text() == value
    assert pipeline_lib.read_stage(aside)["done"]
    assert any(f"{name}: its config" in line and str(aside) in line for line in lines), lines
  assert (tmp_path / "a" / "out.txt").read_text() == "10"
  # Back and forth: every replaced run is kept, the same config's twice too.
  pipeline_lib.run_stages([_stage("a", 1), _stage("b", 2, ("a",))], tmp_path, quiet)
  pipeline_lib.run_stages([_stage("a", 10), _stage("b", 2, ("a",))], tmp_path, quiet)
  assert (tmp_path / "replaced" / f"a-{first['a']['fingerprint']}.2" / "out.txt").read_text() == "1"
  assert len(os.listdir(tmp_path / "replaced")) == 6


# ---------------------------------------------------------------- the chat's long message


def test_too_long_message_error_reads_correctly():
  tokenizer = Tokenizer.load(TOKENIZER)
  long = [{"role": "user", "content": "a long question " * 20}]
  with pytest.raises(ValueError) as e:
    tokenizer.encode_chat_truncated(long, 1)
  n = len(tokenizer.encode_chat(long, True))
  assert str(e.value).startswith(f"The last message takes {n} tokens, more than the 1 that fits")
  system = [{"role": "system", "content": "Be brief."}, *long]
  with pytest.raises(ValueError) as e:
    tokenizer.encode_chat_truncated(system, 10)
  n = len(tokenizer.encode_chat(system, True))
  assert str(e.value).startswith(
    f"The system message and the last message take {n} tokens, more than the 10 that fit"
  )
