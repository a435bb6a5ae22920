"""Config sections every stage shares: the optimizer and loop (`train`) and the mesh.

Each stage states its own values in one `train_config` call instead of
copy-editing the pretraining section (big_vision keeps such shared pieces in
one common file too). A value may be one number for every preset or a dict
{preset: value}.
"""

import ml_collections

PRESETS = ("tiny", "small", "base")


def pick(value, preset: str):
  """`value[preset]` for a per-preset dict, else `value`."""
  return value[preset] if isinstance(value, dict) else value


def train_config(
  preset: str,
  *,
  steps,
  batch_size,
  lr,
  warmup_steps,
  log_every,
  eval_every,
  eval_batches,
  ckpt_every,
  measure_peak,
  weight_decay=0.1,
  min_lr_ratio=0.1,
  sample_tokens=None,
) -> ml_collections.ConfigDict:
  """The `train` section read by gptjax.train: AdamW (b1 0.9, b2 0.95, weight
  decay off biases and LayerNorms), global-norm clipping at 1, linear warmup
  then cosine decay to lr * min_lr_ratio, and the loop's schedule."""
  t = ml_collections.ConfigDict()
  t.steps = pick(steps, preset)
  t.batch_size = pick(batch_size, preset)  # global, sequences
  t.grad_accum = 1  # micro-batches per optimizer step
  t.lr = pick(lr, preset)
  t.min_lr_ratio = pick(min_lr_ratio, preset)  # cosine decays to lr * min_lr_ratio
  t.warmup_steps = pick(warmup_steps, preset)
  t.weight_decay = pick(weight_decay, preset)
  t.b1 = 0.9
  t.b2 = 0.95
  t.clip_norm = 1.0
  t.log_every = pick(log_every, preset)
  t.eval_every = pick(eval_every, preset)
  t.eval_batches = pick(eval_batches, preset)
  t.ckpt_every = pick(ckpt_every, preset)
  t.keep_checkpoints = 3
  if sample_tokens is not None:
    t.sample_tokens = pick(sample_tokens, preset)
  t.measure_peak = pick(measure_peak, preset)  # time a large matmul at start: the MFU denominator
  return t


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh; -1 on one axis takes all remaining devices."""
  m = ml_collections.ConfigDict()
  m.data = -1
  m.fsdp = 1
  m.tensor = 1
  m.num_devices = -1  # -1 = every device; N = the first N (small meshes in tests)
  return m
