"""Document sources: where pretraining text comes from, and how it is split.

A *source* yields documents `(doc_id, text)` in a deterministic order. Each
document belongs to exactly one split, decided by a stable hash of its
`doc_id` alone (`hash_split`), so no document is ever in both 'train' and
'validation', whatever else changes.

Sources are named by a *spec* string, as in `config.data.mixture`:

  english        the public-domain prose embedded in this package
                 (gptjax/data/corpora/english, see SOURCES.md there), cut into
                 documents of about 4-16 KB at paragraph boundaries.
  code           the running interpreter's standard library `.py` files, one
                 file per document. Test suites go to a separate split 'test'
                 and are never trained on.
  dir:<path>     every text/code file under a local directory (recursive).
  tfds:<name>    a tfds catalog dataset (needs internet the first time); the
                 text feature is `config.data.tfds_text_key` (default 'text').

  world          the synthetic world's known facts in many templates
                 (gptjax.tasks.world), `config.data.world_passes` passes over
                 the world of seed `config.data.world_seed`.

More named sources are added with one line:

  register_source("name", documents)   # fn(config) -> Iterable[Doc]

`iter_split(spec, config, split)` is the one entry point the rest of gptjax
uses: the documents of one split, capped at `config.data.max_chars`.
"""

import dataclasses
import gzip
import hashlib
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Iterable, Iterator

from gptjax.tasks import world as world_lib

Doc = tuple[str, str]  # (doc_id, text)
SPLITS = ("train", "validation")

ENGLISH_DIR = Path(__file__).parent / "corpora" / "english"
TEXT_EXTENSIONS = frozenset(
  {
    ".txt",
    ".md",
    ".rst",
    ".text",
    ".py",
    ".pyi",
    ".ipynb",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".java",
    ".js",
    ".ts",
    ".go",
    ".rs",
    ".sh",
    ".tex",
    ".html",
    ".css",
    ".json",
    ".toml",
    ".yaml",
    ".yml",
    ".cfg",
    ".ini",
  }
)
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


# ----------------------------------------------------------------------------
# Hashing and splits.


def stable_hash(text: str) -> int:
  """A 64-bit hash of `text` that is the same in every process and run."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def hash_split(doc_id: str, val_fraction: float) -> str:
  """'validation' for a `val_fraction` share of doc ids, else 'train'."""
  u = stable_hash("split:" + doc_id) / 2.0**64  # uniform in [0, 1)
  return "validation" if u < val_fraction else "train"


def stable_order(names: Iterable[str]) -> list[str]:
  """`names` in a fixed pseudo-random order, so a capped prefix samples all."""
  return sorted(names, key=lambda n: (stable_hash("order:" + n), n))


def is_test_file(relpath: str) -> bool:
  """True for files of a test suite: under test/, tests/, idle_test/ or test_*.py."""
  parts = Path(relpath).parts
  return bool(_TEST_DIRS.intersection(parts[:-1])) or parts[-1].startswith("test_")


def code_split(doc_id: str, val_fraction: float) -> str:
  """Test suites go to 'test', never 'train'; the rest by `hash_split`."""
  return "test" if is_test_file(doc_id) else hash_split(doc_id, val_fraction)


# ----------------------------------------------------------------------------
# Cutting long texts into documents.


def _best_cut(window: str, target: int) -> int | None:
  """End offset of the separator in `window` nearest `target`, by preference.

  Paragraph breaks beat sentence ends, which beat line ends and spaces.
  """
  for pattern in (r"\n[ \t]*\n", r"[.!?][\"')\]]*\s", r"\n", r" "):
    ends = [m.end() for m in re.finditer(pattern, window)]
    if ends:
      return min(ends, key=lambda e: abs(e - target))
  return None


def chunk_text(
  text: str, min_chars: int = 4096, max_chars: int = 16384, target_chars: int = 8192
) -> list[str]:
  """Cuts `text` into pieces of `min_chars`..`max_chars` (``"".join`` == text).

  Cuts fall at paragraph boundaries where there are any, else at sentence
  ends, else at spaces. Only a text shorter than `min_chars` gives a shorter
  piece.
  """
  chunks, start = [], 0
  while len(text) - start > max_chars:
    window = text[start + min_chars : start + max_chars]
    cut = _best_cut(window, target_chars - min_chars)
    end = start + min_chars + (len(window) if cut is None else cut)
    chunks.append(text[start:end])
    start = end
  if start < len(text):
    chunks.append(text[start:])
  return chunks


# ----------------------------------------------------------------------------
# Built-in sources.


def _read_text(path: Path) -> str | None:
  """The file's UTF-8 text, or None for binary or undecodable files."""
  try:
    data = path.read_bytes()
  except OSError:
    return None
  if b"\x00" in data[:8192]:
    return None
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return None


def english_documents(config) -> Iterator[Doc]:
  """The embedded English prose, each file cut into ~4-16 KB documents."""
  del config  # The embedded corpus has no options.
  files = {p.relative_to(ENGLISH_DIR).as_posix(): p for p in ENGLISH_DIR.rglob("*.txt.gz")}
  for rel in stable_order(files):
    text = gzip.decompress(files[rel].read_bytes()).decode("utf-8")
    for i, chunk in enumerate(chunk_text(text)):
      yield f"{rel.removesuffix('.gz')}#{i}", chunk


def stdlib_dir() -> Path:
  """The running interpreter's standard library directory."""
  return Path(sysconfig.get_paths()["stdlib"])


def code_documents(config) -> Iterator[Doc]:
  """The standard library's `.py` files, one per document (no site-packages)."""
  del config
  root = stdlib_dir()
  files = {}
  for path in root.rglob("*.py"):
    rel = path.relative_to(root)
    if {"site-packages", "dist-packages", "__pycache__"}.intersection(rel.parts):
      continue
    files[rel.as_posix()] = path
  for rel in stable_order(files):
    text = _read_text(files[rel])
    if text and text.strip():
      yield rel, text


def list_text_files(root: Path) -> dict[str, Path]:
  """{relative posix path: path} of text-like files under `root`, no hidden dirs."""
  files = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
    for name in filenames:
      path = Path(dirpath) / name
      if path.suffix.lower() in TEXT_EXTENSIONS and path.is_file():
        files[path.relative_to(root).as_posix()] = path
  return files


def _dir_root(spec: str) -> Path:
  """The directory of a 'dir:<path>' spec; raises if it does not exist."""
  root = Path(spec.removeprefix("dir:")).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(
      f"Corpus directory not found: {str(root)!r} (from data source {spec!r})."
    )
  return root.resolve()


def dir_documents(spec: str, config) -> Iterator[Doc]:
  """Every decodable text file under the directory of `spec`, one per document."""
  del config
  root = _dir_root(spec)
  files = list_text_files(root)
  found, skipped = False, []
  for rel in stable_order(files):
    text = _read_text(files[rel])
    if text is None:
      skipped.append(rel)  # binary or not UTF-8: said below, never dropped silently
    elif text.strip():
      found = True
      yield rel, text
  if skipped:
    print(
      f"[data] {spec}: skipped {len(skipped)} of {len(files)} files that are not UTF-8 "
      f"text (e.g. {', '.join(skipped[:3])}); convert them to UTF-8 to include them"
    )
  if not found:
    raise ValueError(
      f"empty corpus directory {str(root)!r}: no decodable text files with "
      f"extensions {sorted(TEXT_EXTENSIONS)} (from data source {spec!r})."
    )


def tfds_documents(spec: str, config) -> Iterator[Doc]:
  """Documents of a tfds catalog dataset's 'train' split (downloads it once).

  Its own splits are ignored: the train/validation split is re-derived from
  doc ids like every other source's, so caps and fractions behave the same.
  """
  import tensorflow_datasets as tfds  # Heavy import, only when used.

  name = spec.removeprefix("tfds:")
  key = config.data.get("tfds_text_key", "text")
  data_dir = config.data.get("tfds_dir") or None
  try:
    source = tfds.data_source(name, split="train", data_dir=data_dir, download=True)
  except Exception as e:  # Network, unknown name, needs TensorFlow, ...
    raise RuntimeError(
      f"tfds dataset {name!r} is unavailable (data source {spec!r}): {e}. "
      "tfds catalog datasets need internet the first time, and some need "
      "TensorFlow to prepare; use 'english', 'code' or 'dir:<path>' offline."
    ) from e
  for i in range(len(source)):
    record = source[i]
    if key not in record:
      raise KeyError(
        f"tfds dataset {name!r} has no feature {key!r}; set "
        f"config.data.tfds_text_key to one of {sorted(record)}."
      )
    text = record[key]
    yield f"{name}/{i}", text.decode("utf-8") if isinstance(text, bytes) else text


# ----------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class Source:
  """How to list a source's documents and assign them to splits.

  Attributes:
    documents: config -> Iterable[(doc_id, text)], in a deterministic order.
    split_of: (doc_id, val_fraction) -> split name.
    fingerprint: config -> str; changes whenever the documents would, so
      caches keyed by it never go stale (see `source_fingerprint`).
  """

  documents: Callable[..., Iterable[Doc]]
  split_of: Callable[[str, float], str] = hash_split
  fingerprint: Callable[..., str] = lambda config: ""


_REGISTRY: dict[str, Source] = {}
PREFIXES = ("dir:", "tfds:")


def register_source(
  name: str,
  documents: Callable[..., Iterable[Doc]],
  *,
  split_of: Callable[[str, float], str] = hash_split,
  fingerprint: Callable[..., str] = lambda config: "",
) -> None:
  """Makes `name` usable in `config.data.mixture`.

  Args:
    name: source name, without ':'.
    documents: fn(config) -> Iterable[(doc_id, text)], deterministic.
    split_of: fn(doc_id, val_fraction) -> 'train' | 'validation' | other.
    fingerprint: fn(config) -> str that changes when the documents change
      (e.g. `lambda c: repr(c.world)` for a generator with options), so the
      prepared dataset and token caches are rebuilt.
  """
  if ":" in name:
    raise ValueError(f"Source name {name!r} may not contain ':'.")
  _REGISTRY[name] = Source(documents, split_of, fingerprint)


def source_names() -> list[str]:
  """Names allowed in `config.data.mixture` (prefixed forms end in '...')."""
  return sorted(_REGISTRY) + [p + "<...>" for p in PREFIXES]


def get_source(spec: str) -> Source:
  """The `Source` for a spec: a registered name, 'dir:<path>' or 'tfds:<name>'."""
  if spec in _REGISTRY:
    return _REGISTRY[spec]
  if spec.startswith("dir:"):
    _check_dir(spec)
    return Source(
      lambda config: dir_documents(spec, config), fingerprint=lambda config: _dir_fingerprint(spec)
    )
  if spec.startswith("tfds:"):
    return Source(
      lambda config: tfds_documents(spec, config),
      fingerprint=lambda config: config.data.get("tfds_text_key", "text"),
    )
  raise ValueError(
    f"Unknown data source {spec!r} in data.mixture; allowed: {', '.join(source_names())}."
  )


def _check_dir(spec: str) -> None:
  """Raises unless the directory of `spec` exists and has text-like files."""
  root = _dir_root(spec)
  if not list_text_files(root):
    raise ValueError(
      f"empty corpus directory {str(root)!r}: no files with extensions "
      f"{sorted(TEXT_EXTENSIONS)} (from data source {spec!r})."
    )


def _dir_fingerprint(spec: str) -> str:
  """Names, sizes and mtimes of a directory's files: changes when they do."""
  root = _dir_root(spec)
  files = list_text_files(root)
  entries = [
    f"{rel}:{files[rel].stat().st_size}:{files[rel].stat().st_mtime_ns}" for rel in sorted(files)
  ]
  return f"{root}\n" + "\n".join(entries)


def _english_fingerprint(config) -> str:
  del config
  return "\n".join(f"{p.name}:{p.stat().st_size}" for p in sorted(ENGLISH_DIR.rglob("*.txt.gz")))


def _code_fingerprint(config) -> str:
  del config
  return f"{sys.version}\n{stdlib_dir()}"


def world_config(config) -> dict:
  """The world options of `config.data`, with their defaults."""
  d = config.data
  return {
    "seed": int(d.get("world_seed", 0)),
    "n_entities": int(d.get("world_entities", 240)),
    "passes": int(d.get("world_passes", 1)),
  }


def world_documents(config) -> Iterator[Doc]:
  """`passes` passes over the known facts of the configured world.

  Each pass writes every known entity in every template, freshly shuffled;
  unknown and held-out entities never appear (see gptjax.tasks.world).
  """
  w = world_config(config)
  world = world_lib.make_world(w["seed"], n_entities=w["n_entities"])
  per_pass = sum(1 for _ in world_lib.world_documents(world, seed=w["seed"]))
  yield from world_lib.world_documents(world, seed=w["seed"], n_docs=w["passes"] * per_pass)


def _world_fingerprint(config) -> str:
  """The world options and the generator's source: a template edit rebuilds."""
  code = Path(world_lib.__file__).read_bytes()
  return f"{sorted(world_config(config).items())}\n{hashlib.sha256(code).hexdigest()}"


register_source("english", english_documents, fingerprint=_english_fingerprint)
register_source("world", world_documents, fingerprint=_world_fingerprint)
register_source("code", code_documents, split_of=code_split, fingerprint=_code_fingerprint)


# ----------------------------------------------------------------------------
# Splits and caps.


def source_fingerprint(spec: str, config) -> str:
  """A short hex id of everything that determines `iter_split`'s output."""
  key = "\n".join(
    [
      spec,
      str(config.data.val_fraction),
      str(config.data.max_chars),
      CAP_RULE,
      get_source(spec).fingerprint(config),
    ]
  )
  return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def cap_chars(docs: Iterable[Doc], max_chars: int) -> Iterator[Doc]:
  """The first documents up to `max_chars` characters in all (0 = no cap).

  The last document is cut short to land exactly on the cap.
  """
  total = 0
  for doc_id, text in docs:
    if max_chars and total + len(text) >= max_chars:
      if max_chars > total:
        yield doc_id, text[: max_chars - total]
      return
    total += len(text)
    yield doc_id, text


CAP_RULE = "train=max_chars, validation=max(max_chars*vf/(1-vf), 20000)"
MIN_VALIDATION_CHARS = 20_000


def split_cap(max_chars: int, val_fraction: float, split: str) -> int:
  """Characters kept of `split` under config.data.max_chars (0 = everything).

  The cap applies to train; validation keeps the same proportion to train as
  without a cap (val_fraction), but at least MIN_VALIDATION_CHARS so a tiny
  run still has enough validation windows.
  """
  if not max_chars or split == "train":
    return max_chars
  return max(int(max_chars * val_fraction / (1.0 - val_fraction)), MIN_VALIDATION_CHARS)


def iter_split(spec: str, config, split: str) -> Iterator[Doc]:
  """Documents of source `spec` in `split`, capped by `split_cap`."""
  source = get_source(spec)
  val_fraction = config.data.val_fraction
  docs = (
    (doc_id, text)
    for doc_id, text in source.documents(config)
    if source.split_of(doc_id, val_fraction) == split
  )
  return cap_chars(docs, split_cap(config.data.max_chars, val_fraction, split))
