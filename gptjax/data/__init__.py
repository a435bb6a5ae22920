"""Pretraining data: document sources -> tfds array_record -> token streams -> batches.

  sources.py   named document sources ('english', 'code', 'dir:<path>',
               'tfds:<name>', and any `register_source`d one), hash splits, caps
  builder.py   the tfds builder that materialises a source (random access)
  packing.py   tokenized streams, packing, and the index-based `Pipeline`
  tokenizer_corpus.py  a run's tokenizer, trained on a sample of its mixture

Caches live under `cache_dir` (default $GPTJAX_CACHE or ~/.cache/gptjax):
`tfds/` for prepared documents (or config.data.tfds_dir when set) and
`tokens/` for token streams.
"""

from gptjax.data.builder import default_cache_dir, prepare_documents
from gptjax.data.packing import Pipeline, validate_mixture
from gptjax.data.sources import iter_split, register_source, source_names

__all__ = [
  "Pipeline",
  "default_cache_dir",
  "iter_split",
  "prepare_documents",
  "register_source",
  "source_names",
  "validate_mixture",
]
