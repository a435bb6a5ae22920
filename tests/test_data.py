"""Data: sources and splits, the tfds builder, packing and the batch iterator."""

import numpy as np
import pytest

from gptjax.data import Pipeline, builder, packing, sources


def doc_ids(spec, config, split):
  return [doc_id for doc_id, _ in sources.iter_split(spec, config, split)]


def uncapped(config):
  config = config.copy_and_resolve_references()
  config.data.max_chars = 0
  return config


# ----------------------------------------------------------------------------
# Sources and splits.


def test_chunk_text_is_lossless_and_bounded():
  paragraphs = [("word " * n).strip() + "." for n in range(1, 400, 7)]
  text = "\n\n".join(paragraphs) + "\n" + "x" * 40_000
  chunks = sources.chunk_text(text)
  assert "".join(chunks) == text
  assert all(len(c) <= 16384 for c in chunks)
  assert all(len(c) >= 4096 for c in chunks[:-1])


@pytest.mark.parametrize("spec", ["english", "code"])
def test_no_document_in_both_splits(spec, data_config):
  config = uncapped(data_config)
  train = set(doc_ids(spec, config, "train"))
  validation = set(doc_ids(spec, config, "validation"))
  assert len(validation) >= 20 and len(train) > 10 * len(validation)
  assert not train & validation


def test_english_documents_are_paragraph_sized(data_config):
  lengths = [len(t) for _, t in sources.english_documents(data_config)]
  assert len(lengths) > 500
  assert max(lengths) <= 16384 and np.median(lengths) > 4096


def test_code_train_has_no_test_suites(data_config):
  config = uncapped(data_config)
  train = doc_ids("code", config, "train")
  validation = doc_ids("code", config, "validation")
  assert any(d.startswith("json/") for d in train + validation)
  for doc_id in train + validation:
    assert not sources.is_test_file(doc_id), doc_id
  assert sources.is_test_file("test/test_json.py")
  assert sources.is_test_file("idlelib/idle_test/htest.py")
  assert sources.is_test_file("unittest/test/testmock/support.py")
  assert not sources.is_test_file("unittest/case.py")


def test_max_chars_caps_deterministically(data_config):
  docs = list(sources.iter_split("english", data_config, "train"))
  assert sum(len(t) for _, t in docs) == data_config.data.max_chars
  assert docs == list(sources.iter_split("english", data_config, "train"))


def test_dir_source(tmp_path, data_config):
  (tmp_path / "sub").mkdir()
  for i in range(40):
    (tmp_path / "sub" / f"note{i}.md").write_text(f"# Note {i}\n\nText {i}.\n")
  (tmp_path / "a.py").write_text("print('hi')\n")
  (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  (tmp_path / "image.png").write_bytes(b"\x89PNG")
  spec = f"dir:{tmp_path}"
  train = dict(sources.iter_split(spec, data_config, "train"))
  validation = dict(sources.iter_split(spec, data_config, "validation"))
  assert set(train) | set(validation) == {"a.py"} | {f"sub/note{i}.md" for i in range(40)}
  assert not set(train) & set(validation)
  assert train.get("a.py", validation.get("a.py")) == "print('hi')\n"


def test_empty_directory_is_a_value_error(tmp_path, data_config):
  (tmp_path / "image.png").write_bytes(b"\x89PNG")
  with pytest.raises(ValueError, match="empty corpus directory.*" + str(tmp_path.name)):
    packing.validate_mixture({f"dir:{tmp_path}": 1.0})


def test_missing_directory_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="does_not_exist"):
    packing.validate_mixture({f"dir:{tmp_path / 'does_not_exist'}": 1.0})


@pytest.mark.parametrize(
  "mixture, match",
  [
    ({"english": 1.0, "klingon": 1.0}, "data.mixture.*klingon.*english"),
    ({"english": 0.0}, r"data.mixture\['english'\]"),
    ({"english": -1.0}, "positive"),
    ({}, "data.mixture is empty"),
  ],
)
def test_bad_mixture_is_a_value_error(mixture, match):
  with pytest.raises(ValueError, match=match):
    packing.validate_mixture(mixture)


def test_register_source(data_config):
  def count_docs(config):
    del config
    return ((f"doc{i}", f"Fact {i}.\n") for i in range(100))

  sources.register_source("test_counting", count_docs)
  try:
    assert "test_counting" in sources.source_names()
    validation = doc_ids("test_counting", data_config, "validation")
    assert 0 < len(validation) < 20
    packing.validate_mixture({"test_counting": 1.0})
  finally:
    del sources._REGISTRY["test_counting"]


# ----------------------------------------------------------------------------
# The tfds builder.


def test_builder_round_trips_documents(data_config, data_cache_dir):
  prepared = builder.prepare_documents("english", data_config, data_cache_dir)
  for split in sources.SPLITS:
    expected = dict(sources.iter_split("english", data_config, split))
    ds = prepared[split]
    got = {
      builder.decode_text(r["doc_id"]): builder.decode_text(r["text"])
      for r in (ds[i] for i in range(len(ds)))
    }
    assert got == expected


def test_builder_configs_differ_by_source_and_cap(data_config, tmp_path):
  (tmp_path / "a.txt").write_text("some text")
  names = {
    builder.config_name("english", data_config),
    builder.config_name("code", data_config),
    builder.config_name("english", uncapped(data_config)),
    builder.config_name(f"dir:{tmp_path}", data_config),
  }
  assert len(names) == 4
  before = builder.config_name(f"dir:{tmp_path}", data_config)
  (tmp_path / "b.txt").write_text("a new file")  # contents changed
  assert builder.config_name(f"dir:{tmp_path}", data_config) != before


# ----------------------------------------------------------------------------
# The pipeline.


def test_batch_shapes_dtypes_and_shift(tiny_pipeline, data_config):
  T = data_config.model.max_len
  batch = tiny_pipeline.train_batch(0, 8)
  assert batch["tokens"].shape == batch["targets"].shape == (8, T)
  assert batch["loss_mask"].shape == (8, T)
  assert batch["source"].shape == (8,)
  assert batch["tokens"].dtype == batch["targets"].dtype == np.int32
  assert batch["source"].dtype == np.int32
  assert batch["loss_mask"].dtype == np.float32
  np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
  assert batch["tokens"].max() < data_config.model.vocab_size
  for row, k in zip(batch["tokens"], batch["source"]):  # a real window
    stream = np.asarray(tiny_pipeline.streams[tiny_pipeline.sources[k], "train"])
    starts = np.flatnonzero(stream[: len(stream) - T] == row[0])
    assert any((stream[s : s + T] == row).all() for s in starts)


def test_train_batch_is_a_function_of_step(
  tiny_pipeline, data_config, tiny_tokenizer, data_cache_dir
):
  other = Pipeline(data_config, tiny_tokenizer, data_cache_dir)  # cached
  late = other.train_batch(7, 4)  # drawn before steps 0..6
  for step in range(7):
    tiny_pipeline.train_batch(step, 4)
  for key, value in tiny_pipeline.train_batch(7, 4).items():
    np.testing.assert_array_equal(value, late[key])
  assert not np.array_equal(tiny_pipeline.train_batch(8, 4)["tokens"], late["tokens"])


def test_seed_changes_batches(data_config, tiny_tokenizer, data_cache_dir):
  config = data_config.copy_and_resolve_references()
  config.seed = 1
  a = Pipeline(config, tiny_tokenizer, data_cache_dir).train_batch(0, 4)
  b = Pipeline(data_config, tiny_tokenizer, data_cache_dir).train_batch(0, 4)
  assert not np.array_equal(a["tokens"], b["tokens"])


def test_mixture_proportions(tiny_pipeline):
  rows = np.concatenate([tiny_pipeline.train_batch(step, 256)["source"] for step in range(20)])
  fractions = np.bincount(rows, minlength=len(tiny_pipeline.sources)) / len(rows)
  np.testing.assert_allclose(fractions, tiny_pipeline.weights, atol=0.02)


def test_streams_join_documents_with_eos(
  tiny_pipeline, tiny_tokenizer, data_config, data_cache_dir
):
  docs = builder.prepare_documents("code", data_config, data_cache_dir)["validation"]
  stream = tiny_pipeline.streams["code", "validation"]
  assert (stream == tiny_tokenizer.eos_id).sum() == len(docs)
  first = tiny_tokenizer.encode(builder.decode_text(docs[0]["text"]))
  assert list(stream[: len(first) + 1]) == first + [tiny_tokenizer.eos_id]


def test_eval_batches_are_fixed_and_tile_the_stream(tiny_pipeline, data_config):
  T = data_config.model.max_len
  a = list(tiny_pipeline.eval_batches("english", 4, 3))
  b = list(tiny_pipeline.eval_batches("english", 4, 3))
  assert len(a) == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  stream = np.asarray(tiny_pipeline.streams["english", "validation"])
  targets = np.concatenate([batch["targets"] for batch in a]).reshape(-1)
  np.testing.assert_array_equal(targets, stream[1 : 1 + 12 * T])
  with pytest.raises(ValueError, match="not in data.mixture"):
    next(tiny_pipeline.eval_batches("klingon", 1, 1))


def test_unigram_entropy(tiny_pipeline):
  for source in tiny_pipeline.sources:
    assert 2.0 < tiny_pipeline.unigram_entropy(source) < np.log(512)
  assert tiny_pipeline.unigram_entropy() >= min(
    tiny_pipeline.unigram_entropy(s) for s in tiny_pipeline.sources
  )


def test_short_source_is_a_clear_error(tmp_path, data_config, tiny_tokenizer, data_cache_dir):
  for i in range(3):
    (tmp_path / f"tiny{i}.txt").write_text("too short\n")
  config = data_config.copy_and_resolve_references()
  config.data.mixture = {f"dir:{tmp_path}": 1.0}
  config.data.val_fraction = 0.5
  with pytest.raises(ValueError, match="max_len"):
    Pipeline(config, tiny_tokenizer, data_cache_dir)


def test_dir_source_in_pipeline(tmp_path, data_config, tiny_tokenizer, data_cache_dir):
  for i in range(30):
    (tmp_path / f"story{i}.txt").write_text(f"Story {i}. " * 60)
  config = data_config.copy_and_resolve_references()
  config.data.mixture = {f"dir:{tmp_path}": 1.0}
  config.data.val_fraction = 0.2
  p = Pipeline(config, tiny_tokenizer, data_cache_dir)
  batch = p.train_batch(3, 4)
  assert tiny_tokenizer.decode(batch["tokens"][0]).count("Story") > 3
