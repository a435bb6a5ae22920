"""Pretraining as a composition: tokenizer -> data pipeline -> Task -> train loop.

`experiments/pretrain.py` is its command line; SFT, the benchmark and the
scaling sweep reuse `build_task` and `sample_texts`.
"""

import os

import jax

from gptjax import config as config_lib, losses, model as model_lib, runs, sampling, sharding, train
from gptjax.data.packing import Pipeline
from gptjax.data.tokenizer_corpus import load_or_train_tokenizer
from gptjax.tokenizer import Tokenizer

MIN_VOCAB = 4 + 1 + 4 + 256 + 32


def validate(config) -> None:
  """Fails in the first second, naming the field, instead of after data preparation."""
  model_lib.TransformerConfig.from_config(config.model)
  config_lib.require(
    config.model.vocab_size >= MIN_VOCAB,
    "model.vocab_size",
    config.model.vocab_size,
    f">= {MIN_VOCAB} (4 special ids, newline, 4 chat tokens and 256 byte-fallback pieces "
    "come first; the corpus's pieces after them)",
  )
  config_lib.validate_train(config.train)
  config_lib.require(
    config.train.sample_tokens > 0,
    "train.sample_tokens",
    config.train.sample_tokens,
    "a positive integer",
  )
  mesh = sharding.mesh_shape(config.mesh, len(sharding.mesh_devices(config.mesh)))
  config_lib.require(
    config.train.batch_size % (mesh[0] * mesh[1]) == 0,
    "train.batch_size",
    config.train.batch_size,
    f"a multiple of mesh data x fsdp = {mesh[0] * mesh[1]}",
  )


def sample_texts(
  model,
  params,
  tokenizer: Tokenizer,
  prompts,
  max_new_tokens: int,
  seed: int = 0,
  sampling_params=sampling.SamplingParams(top_p=0.9),
) -> list[str]:
  """Continuations of text prompts (bos + prompt), for eval-time samples."""
  ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
  out = sampling.generate(
    model,
    params,
    ids,
    max_new_tokens=max_new_tokens,
    rng=jax.random.PRNGKey(seed),
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
    sampling=sampling_params,
    truncate="left",
  )
  return [p + t for p, t in zip(prompts, out.texts(tokenizer))]


def build_task(config, pipeline: Pipeline, tokenizer: Tokenizer, log=print) -> train.Task:
  """The pretraining Task: next-token loss on mixture batches, eval per source."""
  model = model_lib.build(config)
  t = config.train
  example = pipeline.train_batch(0, t.batch_size)

  def on_eval(params, step):
    texts = sample_texts(
      model, params, tokenizer, list(config.sample_prompts), t.sample_tokens, seed=step
    )
    for text in texts:
      log(f"  sample> {text!r}")
    return {}

  drop_source = lambda b: {k: v for k, v in b.items() if k != "source"}
  return train.Task(
    name="pretrain",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=lambda step: drop_source(pipeline.train_batch(step, t.batch_size)),
    local_batch=lambda step, rows: drop_source(pipeline.train_batch(step, t.batch_size, rows)),
    example_batch=drop_source(example),
    tokens_per_step=t.batch_size * pipeline.seq_len,
    eval_sets={
      s: (lambda s=s: map(drop_source, pipeline.eval_batches(s, t.batch_size, t.eval_batches)))
      for s in pipeline.sources
    },
    on_eval=on_eval,
  )


def _tokenizer(config, workdir: str) -> Tokenizer:
  try:
    return load_or_train_tokenizer(config, workdir)
  except RuntimeError as e:  # sentencepiece's trainer: e.g. "Vocabulary size is too high"
    raise ValueError(
      f"Training the tokenizer failed ({' '.join(str(e).split())[:200]}): "
      f"config.model.vocab_size={config.model.vocab_size} needs more text than "
      f"config.data.tokenizer_chars={config.data.tokenizer_chars} of this corpus provides; "
      "lower the one or raise the other"
    ) from None


def check_cache_dir(cache_dir: str | None) -> None:
  if cache_dir and os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
    raise ValueError(f"--cache_dir={cache_dir} is a file; pass a directory (created if missing)")


def run(config, workdir: str, cache_dir: str | None = None, log=print):
  """Tokenizer -> data -> train. Returns (state, summary, tokenizer, pipeline)."""
  check_cache_dir(cache_dir)
  with runs.prepare_stage(config, workdir, validate=validate, log=log) as stage:
    tokenizer = _tokenizer(config, stage.workdir)
    pipeline = Pipeline(config, tokenizer, cache_dir)
    for s in pipeline.sources:
      log(
        f"[data] {s}: {pipeline.num_tokens(s, 'train'):,} train / "
        f"{pipeline.num_tokens(s, 'validation'):,} validation tokens"
      )
    train.check_stop("pretrain", "after data preparation, before step 1", stage.workdir)
    task = build_task(config, pipeline, tokenizer, log)
    state, summary = train.run(config, stage.workdir, task, log=log)
  summary["unigram_entropy"] = pipeline.unigram_entropy()
  return state, summary, tokenizer, pipeline
