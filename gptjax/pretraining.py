"""Pretraining as a composition: tokenizer -> data pipeline -> Task -> train loop.

`experiments/pretrain.py` is its command line; SFT, the benchmark and the
scaling sweep reuse `build_task` and `sample_texts`.
"""

import jax

from gptjax import config as config_lib, losses, model as model_lib, sampling, sharding, train
from gptjax.data.packing import Pipeline
from gptjax.data.tokenizer_corpus import load_or_train_tokenizer
from gptjax.tokenizer import Tokenizer


def validate(config) -> None:
  """Fails in the first second, naming the field, instead of after data preparation."""
  model_lib.TransformerConfig.from_config(config.model)
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
    example_batch=drop_source(example),
    tokens_per_step=t.batch_size * pipeline.seq_len,
    eval_sets={
      s: (lambda s=s: map(drop_source, pipeline.eval_batches(s, t.batch_size, t.eval_batches)))
      for s in pipeline.sources
    },
    on_eval=on_eval,
  )


def run(config, workdir: str, cache_dir: str | None = None, log=print):
  """Tokenizer -> data -> train. Returns (state, summary, tokenizer, pipeline)."""
  validate(config)
  sharding.maybe_initialize_distributed()
  workdir = train.prepare_workdir(workdir)
  config_lib.save(config, workdir)
  tokenizer = load_or_train_tokenizer(config, workdir)
  pipeline = Pipeline(config, tokenizer, cache_dir)
  for s in pipeline.sources:
    log(
      f"[data] {s}: {pipeline.num_tokens(s, 'train'):,} train / "
      f"{pipeline.num_tokens(s, 'validation'):,} validation tokens"
    )
  task = build_task(config, pipeline, tokenizer, log)
  state, summary = train.run(config, workdir, task, log=log)
  summary["unigram_entropy"] = pipeline.unigram_entropy()
  return state, summary, tokenizer, pipeline
