"""Token streams, packing, and the index-based batch iterator.

Each source's split is tokenized once into one stream of ids, documents
joined with EOS (`doc0 EOS doc1 EOS ...`), and cached as `.npy`:

  <cache_dir>/tokens/<builder config>-<split>-<tokenizer fingerprint>.npy

(uint16 when the vocabulary fits, else int32), so later runs memory-map it
instantly. A training row is a window `w` of T+1 consecutive tokens
(T = config.model.max_len), packed across document boundaries:

  tokens = w[:-1]    targets = w[1:]      # [T] each

`Pipeline.train_batch(step, B)` is a pure function of (config.seed, step):
its rows' sources and window starts come from
`np.random.default_rng((seed, step))`. There is no iterator state, so the
data position of a checkpoint is its step and resume is exact.
"""

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from gptjax import files, sharding
from gptjax.data import builder, sources
from gptjax.tokenizer import Tokenizer

ENCODE_BATCH_DOCS = 256  # documents per `encode_batch` call


# ----------------------------------------------------------------------------
# Mixture validation.


def validate_mixture(mixture) -> dict[str, float]:
  """{spec: weight} after checking every spec is known and every weight > 0.

  Raises:
    ValueError: naming `data.mixture` and the allowed sources.
    FileNotFoundError: for a 'dir:<path>' whose directory does not exist.
  """
  allowed = ", ".join(sources.source_names())
  if not mixture:
    raise ValueError(f"data.mixture is empty; give weights for some of: {allowed}.")
  weights = {}
  for spec, weight in dict(mixture).items():
    try:
      sources.get_source(spec)
    except ValueError as e:
      if str(spec).startswith("dir:"):
        raise  # empty directory: says which
      raise ValueError(f"data.mixture: unknown source {spec!r}; allowed: {allowed}.") from e
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
      raise ValueError(
        f"data.mixture[{spec!r}] = {weight!r}: weights must be "
        f"positive numbers (sources allowed: {allowed})."
      )
    weights[spec] = float(weight)
  return weights


# ----------------------------------------------------------------------------
# Token streams.


def stream_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def tokenize_documents(docs, tokenizer: Tokenizer) -> np.ndarray:
  """One stream `doc0 EOS doc1 EOS ...` of a random-access document sequence."""
  dtype = stream_dtype(tokenizer.vocab_size)
  pieces = []
  for start in range(0, len(docs), ENCODE_BATCH_DOCS):
    batch = [docs[i] for i in range(start, min(start + ENCODE_BATCH_DOCS, len(docs)))]
    texts = [builder.decode_text(record["text"]) for record in batch]
    for ids in tokenizer.encode_batch(texts):
      pieces.append(np.asarray(ids + [tokenizer.eos_id], dtype=dtype))
  return np.concatenate(pieces) if pieces else np.zeros([0], dtype)


def load_or_build_stream(path: Path, docs, tokenizer: Tokenizer) -> np.ndarray:
  """The cached stream at `path` (memory-mapped), building it if missing."""
  if not path.exists():
    stream = tokenize_documents(docs, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as tmp:  # no torn caches
      np.save(tmp, stream)
  return np.load(path, mmap_mode="r")


def windows(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
  """Rows `stream[s : s + length]` for each start s, as int32 [len(starts), length]."""
  index = starts[:, None] + np.arange(length)[None, :]  # [B, length]
  return np.asarray(stream[index], dtype=np.int32)


def as_batch(rows: np.ndarray, source_ids: np.ndarray) -> dict[str, np.ndarray]:
  """Model inputs from windows of T+1 tokens, rows [B, T+1]."""
  return {
    "tokens": rows[:, :-1],  # [B, T]
    "targets": rows[:, 1:],  # [B, T]
    "loss_mask": np.ones(rows[:, 1:].shape, np.float32),  # [B, T]
    "source": source_ids.astype(np.int32),  # [B]
  }


def entropy(counts: np.ndarray) -> float:
  """Entropy in nats of the distribution proportional to `counts`."""
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------
# Mixture sampling.

# data.mixture_sampling: 'random' draws each row's source i.i.d. by weight (the
# default); 'stratified' fixes the count per batch so that the rows of steps
# 0..s-1 hold floor(W_k s B) - floor(W_{k-1} s B) rows of source k (W the
# cumulative weights): every prefix of the run is within one row of the
# weights, which an ablation over mixture weights needs (i.i.d. rows miss a
# 25% weight by ~1.5 points over 3,000 rows).
MIXTURE_SAMPLING = ("random", "stratified")


def stratified_counts(weights: np.ndarray, step: int, batch_size: int) -> np.ndarray:
  """Rows per source in batch `step` under 'stratified' sampling, [S], summing to B."""
  cum = np.cumsum(np.asarray(weights, np.float64))
  cum[-1] = 1.0  # [S]

  def upto(s):  # rows of each source in steps 0..s-1
    edges = np.floor(cum * s * batch_size + 1e-9).astype(np.int64)  # [S]
    return np.diff(edges, prepend=0)

  return upto(step + 1) - upto(step)


# ----------------------------------------------------------------------------
# The pipeline.


class Pipeline:
  """Token streams of every source in the mixture, and batches drawn from them.

  Attributes:
    sources: source specs in mixture order; a batch's 'source' indexes it.
    weights: mixture weights normalised to sum to 1, [len(sources)].
    seq_len: T, tokens per row.
    streams: {(source, split): 1-D token array}, split 'train' | 'validation'.
  """

  def __init__(self, config, tokenizer: Tokenizer, cache_dir: str | os.PathLike | None = None):
    """Prepares (once) and tokenizes (once) every source of config.data.mixture.

    Args:
      config: the full config; uses config.data, config.model.max_len,
        config.model.vocab_size and config.seed.
      tokenizer: must have config.model.vocab_size pieces.
      cache_dir: prepared datasets (`tfds/`, unless config.data.tfds_dir is
        set) and token streams (`tokens/`); default `builder.default_cache_dir()`.
    """
    if tokenizer.vocab_size != config.model.vocab_size:
      raise ValueError(
        f"model.vocab_size={config.model.vocab_size} differs "
        f"from the tokenizer's {tokenizer.vocab_size}."
      )
    mixture = validate_mixture(config.data.mixture)
    self.sources = list(mixture)
    total = sum(mixture.values())
    self.weights = np.array([mixture[s] / total for s in self.sources])
    self.seq_len = int(config.model.max_len)
    self.sampling = config.data.get("mixture_sampling", "random")
    if self.sampling not in MIXTURE_SAMPLING:
      raise ValueError(f"data.mixture_sampling={self.sampling!r}; allowed: {MIXTURE_SAMPLING}.")
    self.seed = int(config.seed)
    self.vocab_size = tokenizer.vocab_size
    self.streams = {}
    with sharding.primary_first("data preparation"):
      self._load_streams(config, tokenizer, Path(cache_dir or builder.default_cache_dir()))

  def _load_streams(self, config, tokenizer: Tokenizer, cache_dir: Path) -> None:
    for spec in self.sources:
      docs = builder.prepare_documents(spec, config, cache_dir)
      name = builder.config_name(spec, config)
      for split in sources.SPLITS:
        path = cache_dir / "tokens" / f"{name}-{split}-{tokenizer.fingerprint}.npy"
        stream = load_or_build_stream(path, docs[split], tokenizer)
        if len(stream) < self.seq_len + 1:
          raise ValueError(
            f"Source {spec!r} has only {len(stream)} {split} tokens, fewer "
            f"than model.max_len + 1 = {self.seq_len + 1}; add text, raise "
            "data.max_chars, or lower model.max_len / data.val_fraction."
          )
        self.streams[spec, split] = stream

  def row_sources(self, rng: np.random.Generator, step: int, batch_size: int) -> np.ndarray:
    """The source of each row of batch `step`, [B] ('random': i.i.d. by weight;
    'stratified': `stratified_counts` rows per source, in random order)."""
    if self.sampling == "stratified":
      counts = stratified_counts(self.weights, step, batch_size)  # [S]
      return rng.permutation(np.repeat(np.arange(len(self.sources)), counts))
    return rng.choice(len(self.sources), size=batch_size, p=self.weights)

  def num_tokens(self, source: str, split: str = "train") -> int:
    return len(self.streams[source, split])

  def train_batch(
    self, step: int, batch_size: int, rows: np.ndarray | None = None
  ) -> dict[str, np.ndarray]:
    """Batch number `step`: a pure function of (config.seed, step).

    rows: indices into the global batch to read (a process's shard, see
    `sharding.process_rows`); default all. Every row's source and start are
    drawn as for the whole batch, so row i is the same whichever process
    reads it, and only the selected windows are read from the streams.

    Returns:
      {'tokens': int32 [R, T], 'targets': int32 [R, T],
       'loss_mask': float32 [R, T], 'source': int32 [R]}, R = len(rows) or B
    """
    T = self.seq_len
    rng = np.random.default_rng((self.seed, step))
    source_ids = self.row_sources(rng, step, batch_size)  # [B]
    n_starts = np.array([len(self.streams[s, "train"]) - T for s in self.sources])  # [S]
    starts = rng.integers(0, n_starts[source_ids])  # [B]
    if rows is not None:
      source_ids, starts = source_ids[rows], starts[rows]  # [R]
    out = np.empty([len(source_ids), T + 1], np.int32)
    for k, spec in enumerate(self.sources):
      rows_k = source_ids == k
      out[rows_k] = windows(self.streams[spec, "train"], starts[rows_k], T + 1)
    return as_batch(out, source_ids)

  def train_batches(self, start_step: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """train_batch(start_step), train_batch(start_step + 1), ... (resume here)."""
    step = start_step
    while True:
      yield self.train_batch(step, batch_size)
      step += 1

  def eval_batches(
    self, source: str, batch_size: int, n_batches: int
  ) -> Iterator[dict[str, np.ndarray]]:
    """Fixed validation batches of `source`: windows i = 0, 1, 2, ... start at
    i * T, so every target token is scored once; wraps if the stream is short."""
    if source not in self.sources:
      raise ValueError(f"eval source {source!r} is not in data.mixture: {self.sources}.")
    T = self.seq_len
    stream = self.streams[source, "validation"]
    n_windows = (len(stream) - 1) // T
    k = self.sources.index(source)
    for b in range(n_batches):
      index = np.arange(b * batch_size, (b + 1) * batch_size) % n_windows
      rows = windows(stream, index * T, T + 1)
      yield as_batch(rows, np.full([batch_size], k))

  def unigram_entropy(self, source: str | None = None) -> float:
    """Nats/token of the train stream's unigram distribution.

    With `source=None`, of the mixture: each source's unigram distribution
    weighted by its mixture weight, as batches see them. A model that has
    learned anything beyond token frequencies has a lower loss than this.
    """

    def unigram(spec):
      counts = np.bincount(self.streams[spec, "train"], minlength=self.vocab_size).astype(
        np.float64
      )
      return counts / counts.sum()

    if source is not None:
      return entropy(unigram(source))
    return entropy(sum(w * unigram(s) for s, w in zip(self.sources, self.weights)))
