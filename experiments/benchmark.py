"""Measure training and decoding speed; write JSON.

Run:
  python -m experiments.benchmark --config=configs/pretrain.py:small --out=runs/benchmark.json

What it measures, all in one process so the numbers are comparable:
  peak        FLOP/s of a large jitted matmul of the model's dtype on the same devices
  train       tokens/s of the real jitted train step (forward, backward, AdamW)
              and MFU = tokens/s * (6N + 12 * n_layer * d_model * T) / peak
  eval        tokens/s of the forward pass alone
  decode      new tokens/s of KV-cache generation (`gptjax.sampling.generate`,
              greedy) against recomputing a full forward pass per token
              (`sampling.recompute_generate`), at equal batch and length

Inputs are random tokens: the benchmark times compute, not the data pipeline
(whose batches take ~10 ms on the small preset, see README).
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from gptjax import (
  cli,
  losses,
  metrics,
  model as model_lib,
  pretraining as pretrain,
  sampling,
  sharding,
  train,
)

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/pretrain.py:small", "Pretraining config whose model is measured."
)
_OUT = flags.DEFINE_string("out", "runs/benchmark.json", "Where the JSON goes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (after 2 warm-up steps).")
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "32"], "Batch sizes for decoding.")
_DECODE_TOKENS = flags.DEFINE_integer("decode_tokens", 256, "New tokens per decode run.")
_RECOMPUTE_TOKENS = flags.DEFINE_integer(
  "recompute_tokens",
  32,
  "Tokens timed for the no-cache baseline at batch > 1 (each step "
  "costs a full forward over the whole window, so fewer steps give the same per-token rate).",
)
_PROMPT_LEN = 16


def _time(fn, repeats: int) -> float:
  """Best wall time of `repeats` calls (fn must block until done)."""
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def random_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> dict:
  w = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
  return {"tokens": w[:, :-1], "targets": w[:, 1:], "loss_mask": np.ones((batch, seq), np.float32)}


def bench_train(config, mesh) -> dict:
  model = model_lib.build(config)
  t = config.train
  T = config.model.max_len
  rng = np.random.default_rng(0)
  example = random_batch(rng, t.batch_size, T, config.model.vocab_size)
  task = train.Task(
    name="benchmark",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=None,
    example_batch=example,
    tokens_per_step=t.batch_size * T,
  )
  tx = train.make_optimizer(t)
  state, shardings = train.create_state(task, tx, mesh, config.seed)
  n_matmul = model_lib.matmul_params(state.params)
  flops = train.task_flops_per_token(task, state.params)
  step = jax.jit(
    lambda s, b: train.train_step(s, b, loss_fn=task.loss_fn, tx=tx, grad_accum=t.grad_accum),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )
  fwd = jax.jit(lambda p, b: train.eval_step(p, b, loss_fn=task.loss_fn))
  batches = [
    sharding.shard_batch(random_batch(rng, t.batch_size, T, config.model.vocab_size), mesh)
    for _ in range(4)
  ]
  with jax.set_mesh(mesh):
    for i in range(2):  # compile + warm up
      state, m = step(state, batches[i % 4])
    jax.block_until_ready(m)
    start = time.perf_counter()
    for i in range(_STEPS.value):
      state, m = step(state, batches[i % 4])
    jax.block_until_ready((state, m))
    train_s = (time.perf_counter() - start) / _STEPS.value
    jax.block_until_ready(fwd(state.params, batches[0]))
    eval_s = _time(lambda: jax.block_until_ready(fwd(state.params, batches[1])), 5)
  tokens = t.batch_size * T
  return {
    "params": int(model_lib.count_params(state.params)),
    "matmul_params": int(n_matmul),
    "flops_per_token": flops,
    "batch_size": t.batch_size,
    "seq_len": T,
    "step_s": train_s,
    "tokens_per_s": tokens / train_s,
    "eval_tokens_per_s": tokens / eval_s,
    "final_loss": float(m["loss"]),
  }, state.params


def bench_decode(config, params) -> list[dict]:
  """KV cache against full recomputation, greedy, equal batch and length."""
  n_new = _DECODE_TOKENS.value
  cfg = model_lib.TransformerConfig.from_config(config.model)
  if cfg.max_len < _PROMPT_LEN + n_new:  # widen the context; position rows are random anyway
    import dataclasses

    cfg = dataclasses.replace(cfg, max_len=_PROMPT_LEN + n_new)
    wpe = jax.random.normal(jax.random.PRNGKey(1), (cfg.max_len, cfg.d_model)) * 0.01
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["trunk"]["wpe"] = wpe.astype(params["trunk"]["wpe"].dtype)
  model = model_lib.Transformer(cfg)
  out = []
  for b in map(int, _DECODE_BATCHES.value):
    rng = np.random.default_rng(b)
    prompts = rng.integers(10, cfg.vocab_size, (b, _PROMPT_LEN)).astype(np.int32)
    gen = lambda: sampling.generate(
      model,
      params,
      prompts.tolist(),
      max_new_tokens=n_new,
      rng=jax.random.PRNGKey(0),
      eos_id=-1,
      pad_id=0,
      sampling=sampling.GREEDY,
    )
    gen()  # compile
    cache_s = _time(gen, 3)
    n_rec = n_new if b == 1 else min(n_new, _RECOMPUTE_TOKENS.value)
    # The recompute window is always prompt + n_new: every step costs one full
    # forward pass over it, as the last step of an n_new-token generation does.
    padded = np.concatenate([prompts, np.zeros((b, n_new - n_rec), np.int32)], 1)
    rec = lambda: jax.block_until_ready(
      sampling.recompute_generate(model, params, jnp.asarray(padded), n_rec)
    )
    rec()
    rec_s = _time(rec, 1)
    out.append(
      {
        "batch": b,
        "new_tokens": n_new,
        "kv_cache_tokens_per_s": b * n_new / cache_s,
        "recompute_tokens_per_s": b * n_rec / rec_s,
        "recompute_tokens_timed": n_rec,
        "speedup": (b * n_new / cache_s) / (b * n_rec / rec_s),
      }
    )
    logging.warning("decode batch %d: %s", b, out[-1])
  return out


def run(config) -> dict:
  pretrain.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  dtype = model_lib.DTYPES[config.model.dtype]
  peak = metrics.measure_matmul_peak(dtype, devices=mesh.devices.flat)
  tr, params = bench_train(config, mesh)
  peak_after = metrics.measure_matmul_peak(dtype, devices=mesh.devices.flat)
  peak = max(peak, peak_after)  # the machine is shared: use the better of two readings
  result = {
    "preset": config.preset,
    "dtype": config.model.dtype,
    "devices": len(mesh.devices.flat),
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
    "host": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "mesh": dict(mesh.shape),
    "matmul_peak_flops": peak,
    "train": tr,
    "mfu": tr["tokens_per_s"] * tr["flops_per_token"] / peak,
    "decode": bench_decode(config, params),
  }
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  result = run(_CONFIG.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  tr = result["train"]
  print(
    f"train: {tr['tokens_per_s']:,.0f} tok/s, MFU {100 * result['mfu']:.1f}% of a "
    f"{result['matmul_peak_flops'] / 1e9:.0f} GFLOP/s measured matmul peak; "
    f"eval {tr['eval_tokens_per_s']:,.0f} tok/s"
  )
  for d in result["decode"]:
    print(
      f"decode batch {d['batch']}: {d['kv_cache_tokens_per_s']:,.0f} tok/s with KV cache, "
      f"{d['recompute_tokens_per_s']:,.0f} without ({d['speedup']:.1f}x)"
    )
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
