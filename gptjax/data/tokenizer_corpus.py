"""The tokenizer of a run: trained on a sample of its own data mixture.

Lives in `gptjax.data` (not beside `Tokenizer`) because it reads the data
sources: the tokenizer itself knows nothing about corpora.
"""

import os
from pathlib import Path
from typing import Iterator

from gptjax.data import sources
from gptjax.tokenizer import Tokenizer


def mixture_char_budget(mixture: dict[str, float], total: int) -> dict[str, int]:
  """`total` characters split across sources in proportion to their weights."""
  weight_sum = sum(mixture.values())
  return {spec: int(total * w / weight_sum) for spec, w in mixture.items()}


def tokenizer_sample(config) -> Iterator[str]:
  """Training text: the train split of each source, config.data.tokenizer_chars
  characters in all, split in mixture proportion."""
  budget = mixture_char_budget(dict(config.data.mixture), int(config.data.tokenizer_chars))
  for spec, n_chars in budget.items():
    docs = sources.iter_split(spec, config, "train")
    for _, text in sources.cap_chars(docs, n_chars):
      yield text


def load_or_train_tokenizer(config, workdir: str | os.PathLike) -> Tokenizer:
  """`workdir/tokenizer.model` if present, else trains it on the mixture.

  Raises:
    ValueError: if the saved tokenizer's size is not config.model.vocab_size.
  """
  path = Path(workdir) / "tokenizer.model"
  if path.exists():
    tokenizer = Tokenizer.load(path)
  else:
    tokenizer = Tokenizer.train(tokenizer_sample(config), config.model.vocab_size, path)
  if tokenizer.vocab_size != config.model.vocab_size:
    raise ValueError(
      f"config.model.vocab_size={config.model.vocab_size} but the tokenizer "
      f"at {path} has {tokenizer.vocab_size} pieces; use a new workdir or "
      "set model.vocab_size to match."
    )
  return tokenizer
