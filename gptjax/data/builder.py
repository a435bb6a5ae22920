"""A tfds builder that materialises a source's documents as array_record.

Each source spec (with its cap and validation fraction) becomes one builder
config, named `<slug>-<fingerprint>`, e.g. `english-3f2a9c0d1e4b5a67`:

  <data_dir>/gptjax_documents/<slug>-<fingerprint>/1.0.0/
      gptjax_documents-train.array_record-00000-of-00001
      gptjax_documents-validation.array_record-00000-of-00001

so different sources, caps or directories never share a cache, and a source
is prepared once and reused by every later run. Features: `doc_id` and
`text`, both strings. Read back with random access, without TensorFlow:

  ds = prepare_documents("english", config)["train"]   # a Sequence
  ds[0] -> {'doc_id': b'...', 'text': b'...'}

data_dir is `config.data.tfds_dir`, or `<cache_dir>/tfds` where cache_dir
defaults to `$GPTJAX_CACHE` or `~/.cache/gptjax` (see `default_cache_dir`).

tfds builds in `<slug>-<fingerprint>/incomplete.XXXXXX_1.0.0/` and renames it
when done. A build killed outright (kill -9, a lost machine) leaves that folder
behind; the next build of the source deletes it. Builds of one source take an
exclusive lock (`.build.lock`, flock: the OS releases it when its holder dies),
so no build deletes another's folder and two processes never build one source
at once. A split that gets no documents (a one-file corpus: every document
hashed into train) is an error naming the source and data.val_fraction.
"""

import contextlib
import fcntl
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath
from tensorflow_datasets.core.utils import py_utils as tfds_py_utils

from gptjax.data import sources

VERSION = "1.0.0"
INCOMPLETE_PREFIX = "incomplete."  # tfds's prefix for a build in progress
LOCK_FILE = ".build.lock"


def default_cache_dir() -> Path:
  """$GPTJAX_CACHE, else ~/.cache/gptjax: prepared data and token streams."""
  return Path(os.environ.get("GPTJAX_CACHE", "~/.cache/gptjax")).expanduser()


def tfds_data_dir(config, cache_dir: str | os.PathLike | None = None) -> Path:
  """Where documents are prepared: config.data.tfds_dir or <cache_dir>/tfds."""
  if config.data.get("tfds_dir"):
    return Path(config.data.tfds_dir).expanduser()
  return Path(cache_dir or default_cache_dir()) / "tfds"


def config_name(spec: str, config) -> str:
  """A tfds config name unique to the source spec, cap and split fraction."""
  slug = re.sub(r"[^a-zA-Z0-9]+", "_", spec).strip("_")[:40] or "source"
  return f"{slug}-{sources.source_fingerprint(spec, config)}"


class GptjaxDocuments(tfds.core.GeneratorBasedBuilder):
  """Documents (doc_id, text) of one gptjax source, split train/validation."""

  VERSION = tfds.core.Version(VERSION)

  @tfds_py_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. (tfds's own lookup, for builders inside a package, imports
    `importlib_resources`, which tfds does not install.)"""
    return epath.Path(__file__)

  def __init__(
    self,
    *,
    split_documents: Callable[[str], Iterable[sources.Doc]],
    if_empty: Callable[[str], str] = lambda split: f"no {split} documents",
    **kwargs,
  ):
    """`split_documents(split)` yields that split's documents when preparing;
    a split without any is a ValueError saying `if_empty(split)`."""
    self._split_documents = split_documents
    self._if_empty = if_empty
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "doc_id": tfds.features.Text(),
          "text": tfds.features.Text(),
        }
      ),
      description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the documents are local.
    return {split: self._generate_examples(split) for split in sources.SPLITS}

  def _generate_examples(self, split: str):
    n = 0
    for doc_id, text in self._split_documents(split):
      n += 1
      yield doc_id, {"doc_id": doc_id, "text": text}
    if n == 0:  # else tfds fails later, with a traceback and "No examples were yielded"
      raise ValueError(self._if_empty(split))


class _DropCustomConfigNotice(logging.Filter):
  """tfds warns 'Using custom data configuration' for every builder it makes
  from a BuilderConfig it did not register: here that is every source, every
  time, and it is no warning (each pretraining-loss evaluation printed three)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Using custom data configuration" not in record.getMessage()


absl_logging.get_absl_logger().addFilter(_DropCustomConfigNotice())


def documents_builder(
  spec: str, config, cache_dir: str | os.PathLike | None = None
) -> GptjaxDocuments:
  """The (not yet prepared) builder for source `spec` under `config`."""
  builder_config = tfds.core.BuilderConfig(
    name=config_name(spec, config),
    version=VERSION,
    release_notes={},
    description=f"gptjax source {spec!r}",
  )
  vf = config.data.val_fraction
  return GptjaxDocuments(
    split_documents=lambda split: sources.iter_split(spec, config, split),
    if_empty=lambda split: (
      f"Source {spec!r} has no {split} documents: a hash of each document's id sends "
      f"data.val_fraction={vf} of them to validation and the rest to train, and none "
      f"went to {split}; add documents (a directory's files are one document each) "
      "or change data.val_fraction."
    ),
    config=builder_config,
    data_dir=str(tfds_data_dir(config, cache_dir)),
    file_format="array_record",
  )


def prepare_documents(
  spec: str, config, cache_dir: str | os.PathLike | None = None
) -> dict[str, Sequence]:
  """{split: random-access documents} of `spec`, preparing them if needed."""
  builder = documents_builder(spec, config, cache_dir)
  if not builder.is_prepared():
    with building(Path(builder.data_dir).parent) as locked:
      builder = documents_builder(spec, config, cache_dir)  # another process may have built it
      if not builder.is_prepared():
        left = remove_incomplete(Path(builder.data_dir).parent) if locked else []
        print(
          f"[data] preparing {spec!r} as array_record under {builder.data_dir} (once)"
          + (f"; deleted {len(left)} unfinished earlier build(s) of it" if left else "")
        )
        tfds.disable_progress_bar()  # one line instead of a screenful of bars
        builder.download_and_prepare(file_format="array_record")
  return {split: builder.as_data_source(split) for split in sources.SPLITS}


@contextlib.contextmanager
def building(config_dir: Path):
  """Holds the exclusive build lock of one source's folder (blocking until
  free); yields whether it holds it (False where the filesystem has no locks)."""
  config_dir.mkdir(parents=True, exist_ok=True)
  with open(config_dir / LOCK_FILE, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # e.g. ENOLCK on some network filesystems: build unlocked, clean nothing
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def remove_incomplete(config_dir: Path) -> list[Path]:
  """Deletes the `incomplete.*` build folders in `config_dir` (killed builds';
  call it holding `building(config_dir)`, so none is in progress). Returns them."""
  left = sorted(p for p in config_dir.glob(f"{INCOMPLETE_PREFIX}*") if p.is_dir())
  for p in left:
    shutil.rmtree(p, ignore_errors=True)
  return left


def decode_text(value) -> str:
  """A Text feature as read back from array_record (bytes) -> str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
