"""Measure training and decoding speed; write JSON.

Run:
  python -m experiments.benchmark --config=configs/pretrain.py:small --out=runs/benchmark.json
  python -m experiments.benchmark --config=configs/pretrain.py:small --compare=torch \
      --out=runs/benchmark.json      # + the PyTorch-eager peer (requirements-test.txt)

What it measures, all in one process so the numbers are comparable:
  peaks       FLOP/s of large jitted matmuls (one device): float32, bfloat16, and
              bfloat16 with float32 results (the form that reaches XLA:CPU's
              bf16 kernels); with --compare=torch also torch's float32 and bfloat16
  train       tokens/s of the real jitted train step (forward, backward, AdamW)
              and MFU = tokens/s * (6N + 12 * n_layer * d_model * T) / peak
  eval        tokens/s of the forward pass alone
  compare     (--compare=torch) gptjax's train step against `experiments.torch_peer`
              (nanoGPT-style, identical shapes and init, AdamW; bf16 = autocast),
              per activation dtype in --train_dtypes, interleaved: each round runs
              --steps_per_round steps of one, then of the other; tokens/s are
              medians over rounds, `ratio` (gptjax / torch) the median of the
              per-round ratios, `spread` the (max - min) / median of the rounds
  decode      new tokens/s of KV-cache generation (`gptjax.sampling.generate`,
              greedy) against recomputing a full forward pass per token
              (`sampling.recompute_generate`), at equal batch and length

--compare=hf_decode measures decoding of a real run instead (nothing else):
  python -m experiments.convert --src=smollm2 --dst=runs/smollm2_384 --max_len=384
  python -m experiments.convert --src=runs/smollm2_384 --dst=runs/smollm2_hf
  python -m experiments.benchmark --compare=hf_decode --workdir=runs/smollm2_384 \
      --hf_dir=runs/smollm2_hf --decode_batches=1,16 --decode_tokens=128 \
      --out=runs/smollm2_decode.json
  new tokens/s of gptjax's KV-cache `sampling.generate` on the run's params and
  of transformers' `generate` (float32, use_cache=True) on its Hugging Face
  export, greedy, the same chat prompt (the run's chat template) repeated
  --decode_batches times, exactly --decode_tokens new tokens each (no early
  stop), interleaved for --rounds rounds; medians, the per-round ratios
  (gptjax / transformers) and how many greedy tokens the two agree on.

--compare=rm_batches times a reward-model run's own train step (ranking loss,
AdamW, from its trained params) on its training comparisons in three layouts
of the same batches (the same prompts at each step), interleaved:
  python -m experiments.benchmark --compare=rm_batches \
      --workdir=runs/pipeline_small/reward_model --out=runs/rm_batches.json
  stored  each batch [B, K, T] at the comparisons' stored width
  cut     cut after the batch's longest sequence (`comparisons.prompt_batches`)
  packed  the B * K sequences packed into rows (`comparisons.packed_prompt_batches`,
          what the reward-model stage trains on)
  Each layout first steps once through --rm_batches batches (compiling its
  shapes), then --rounds rounds of them; step times are medians over rounds,
  the ratios per round against `stored`; real tokens/s count prompt and
  answer tokens, padding not.
"""

import copy
import json
import os
import platform
import resource
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from gptjax import (
  allocator,
  cli,
  files,
  losses,
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
_STEPS = flags.DEFINE_integer(
  "steps", 10, "Timed steps of the config's own train step (after 2 warm-up steps)."
)
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "32"], "Batch sizes for decoding.")
_DECODE_TOKENS = flags.DEFINE_integer("decode_tokens", 256, "New tokens per decode run.")
_RECOMPUTE_TOKENS = flags.DEFINE_integer(
  "recompute_tokens",
  32,
  "Tokens timed for the no-cache baseline at batch > 1 (each step "
  "costs a full forward over the whole window, so fewer steps give the same per-token rate).",
)
_COMPARE = flags.DEFINE_enum(
  "compare",
  "none",
  ["none", "torch", "hf_decode", "rm_batches"],
  "torch: also time the PyTorch-eager peer, interleaved; hf_decode: only decoding of "
  "--workdir against transformers on --hf_dir; rm_batches: only the reward-model train "
  "step of --workdir on its batch layouts.",
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  "",
  "hf_decode: the gptjax run whose decoding is timed; rm_batches: a reward-model run.",
)
_HF_DIR = flags.DEFINE_string(
  "hf_dir", "", "hf_decode: its Hugging Face export (experiments.convert --src=<workdir>)."
)
_TRAIN_DTYPES = flags.DEFINE_list(
  "train_dtypes", ["float32", "bfloat16"], "Activation dtypes compared with --compare."
)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds of the comparison.")
_STEPS_PER_ROUND = flags.DEFINE_integer("steps_per_round", 2, "Steps per contestant per round.")
_RM_BATCHES = flags.DEFINE_integer(
  "rm_batches", 8, "rm_batches: the batches (steps 0..n-1) each layout cycles through."
)
_DECODE = flags.DEFINE_bool("decode", True, "Also time decoding.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "n of the n x n matmuls timed for the peaks.")
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


# ----------------------------------------------------------------------------
# Contestants: each is a `step()` that runs one full train step and blocks.


class JaxTrainer:
  """gptjax's own jitted train step (`train.train_step`, the real loss and AdamW)."""

  def __init__(self, config, mesh, n_batches: int = 4, compiler_options: dict | None = None):
    self.config, self.mesh = config, mesh
    t = config.train
    self.model = model_lib.build(config)
    self.T, self.tokens = config.model.max_len, t.batch_size * config.model.max_len
    rng = np.random.default_rng(0)
    vocab = config.model.vocab_size
    example = random_batch(rng, t.batch_size, self.T, vocab)
    self.task = train.Task(
      name="benchmark",
      model=self.model,
      loss_fn=losses.lm_loss_fn(self.model),
      train_batch=None,
      example_batch=example,
      tokens_per_step=self.tokens,
    )
    tx = train.make_optimizer(t)
    self.state, shardings = train.create_state(self.task, tx, mesh, config.seed)
    self.flops_per_token = train.task_flops_per_token(self.task, self.state.params)
    self._step = jax.jit(
      lambda s, b: train.train_step(
        s, b, loss_fn=self.task.loss_fn, tx=tx, grad_accum=t.grad_accum
      ),
      out_shardings=(shardings, None),
      donate_argnums=(0,),
      compiler_options=compiler_options,
    )
    self._fwd = jax.jit(lambda p, b: train.eval_step(p, b, loss_fn=self.task.loss_fn))
    self.batches = [
      sharding.shard_batch(random_batch(rng, t.batch_size, self.T, vocab), mesh)
      for _ in range(n_batches)
    ]
    self.i, self.loss = 0, float("nan")

  def hlo_text(self) -> str:
    """The compiled train step's optimised HLO (for per-op profiling)."""
    with jax.set_mesh(self.mesh):
      return self._step.lower(self.state, self.batches[0]).compile().as_text()

  def step(self) -> None:
    with jax.set_mesh(self.mesh):
      self.state, m = self._step(self.state, self.batches[self.i % len(self.batches)])
      self.loss = float(m["loss"])  # blocks until the step is done
    self.i += 1

  def eval_tokens_per_s(self) -> float:
    with jax.set_mesh(self.mesh):
      run = lambda: jax.block_until_ready(self._fwd(self.state.params, self.batches[1]))
      run()
      return self.tokens / _time(run, 5)

  def info(self) -> dict:
    params = self.state.params
    return {
      "params": int(model_lib.count_params(params)),
      "matmul_params": int(model_lib.matmul_params(params)),
      "flops_per_token": self.flops_per_token,
      "batch_size": self.config.train.batch_size,
      "seq_len": self.T,
    }


class TorchTrainer:
  """The PyTorch-eager peer of identical shapes (`experiments.torch_peer`)."""

  def __init__(self, config, bf16: bool, n_batches: int = 4):
    import torch

    from experiments import torch_peer

    torch.manual_seed(config.seed)
    self.torch, self.peer, self.bf16 = torch, torch_peer, bf16
    self.model = torch_peer.from_config(config.model)
    self.opt = torch_peer.make_optimizer(self.model, config.train)
    self.clip = config.train.clip_norm
    t, T = config.train, config.model.max_len
    rng = np.random.default_rng(1)
    self.batches = [
      {
        k: torch.from_numpy(v).long()
        for k, v in random_batch(rng, t.batch_size, T, config.model.vocab_size).items()
        if k != "loss_mask"
      }
      for _ in range(n_batches)
    ]
    self.tokens, self.i, self.loss = t.batch_size * T, 0, float("nan")

  def step(self) -> None:
    b = self.batches[self.i % len(self.batches)]
    self.loss = self.peer.train_step(
      self.model, self.opt, b["tokens"], b["targets"], bf16=self.bf16, clip_norm=self.clip
    )
    self.i += 1

  def info(self) -> dict:
    return {"params": self.peer.count_params(self.model), "threads": self.torch.get_num_threads()}


def _minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(contestants: dict, rounds: int, steps: int, warmup: int = 2) -> tuple[dict, dict]:
  """Per-step wall times and page faults of each contestant, run in turn:
  A x steps, B x steps, A, B, ...

  Interleaving exposes every contestant to the same background load; the
  medians over rounds (and the per-round ratios) are what the report uses.
  Minor page faults are the process's during the step (`gptjax.allocator`).
  """
  for c in contestants.values():
    for _ in range(warmup):
      c.step()
  times = {name: [] for name in contestants}
  faults = {name: [] for name in contestants}
  for _ in range(rounds):
    for name, c in contestants.items():
      for _ in range(steps):
        f, t = _minor_faults(), time.perf_counter()
        c.step()
        times[name].append(time.perf_counter() - t)
        faults[name].append(_minor_faults() - f)
  return times, faults


def summarize(step_times: list[float], tokens: int, steps: int, faults: list[int]) -> dict:
  """Median and spread of step times; rounds are groups of `steps` consecutive steps."""
  per_round = [
    statistics.median(step_times[i : i + steps]) for i in range(0, len(step_times), steps)
  ]
  med = statistics.median(per_round)
  return {
    "step_s": med,
    "step_s_min": min(step_times),
    "step_s_rounds": per_round,
    "tokens_per_s": tokens / med,
    "tokens_per_s_best": tokens / min(step_times),
    "spread": (max(per_round) - min(per_round)) / med,  # (max - min) / median over rounds
    "page_faults_per_step": statistics.median(faults),
  }


# ----------------------------------------------------------------------------
# Matmul peaks


def jax_matmul_peak(dtype, f32_accumulate: bool, n: int, repeats: int) -> float:
  """FLOP/s of a jitted [n, n] @ [n, n] on one device, best of `repeats`.

  `f32_accumulate` asks for float32 results (`preferred_element_type`): for
  bfloat16 inputs that is the form XLA:CPU hands to its bf16 GEMM kernels,
  the plain bf16 -> bf16 product is upcast to float32 first (see README).
  """
  a = jnp.ones((n, n), dtype) / n
  pref = jnp.float32 if f32_accumulate else None
  f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=pref))
  jax.block_until_ready(f(a))
  return 2 * n**3 / _time(lambda: jax.block_until_ready(f(a)), repeats)


def torch_matmul_peak(dtype_name: str, n: int, repeats: int) -> float:
  import torch

  a = torch.ones(n, n, dtype=getattr(torch, dtype_name)) / n
  a @ a
  return 2 * n**3 / _time(lambda: a @ a, repeats)


def matmul_peaks(compare: bool, n: int = 2048, rounds: int = 3) -> dict:
  """Best FLOP/s per kind over `rounds` interleaved rounds of 3 repeats each."""
  kinds = {
    "jax_float32": lambda: jax_matmul_peak(jnp.float32, False, n, 3),
    "jax_bfloat16": lambda: jax_matmul_peak(jnp.bfloat16, False, n, 3),
    "jax_bfloat16_f32_accumulate": lambda: jax_matmul_peak(jnp.bfloat16, True, n, 3),
  }
  if compare:
    kinds["torch_float32"] = lambda: torch_matmul_peak("float32", n, 3)
    kinds["torch_bfloat16"] = lambda: torch_matmul_peak("bfloat16", n, 3)
  best = dict.fromkeys(kinds, 0.0)
  for _ in range(rounds):
    for k, fn in kinds.items():
      best[k] = max(best[k], fn())
  return best


def bench_train(config, mesh) -> tuple[dict, Any]:
  """The config's own train step alone (no peer): tokens/s, eval tokens/s."""
  jt = JaxTrainer(config, mesh)
  times, faults = interleaved({"jax": jt}, rounds=1, steps=_STEPS.value)
  s = summarize(times["jax"], jt.tokens, _STEPS.value, faults["jax"])
  out = {**jt.info(), **{k: s[k] for k in ("step_s", "tokens_per_s", "page_faults_per_step")}}
  out.update(eval_tokens_per_s=jt.eval_tokens_per_s(), final_loss=jt.loss)
  return out, jt.state.params


def bench_compare(config, mesh, dtypes: list[str], peaks: dict) -> dict:
  """gptjax against the PyTorch peer, per activation dtype, interleaved."""
  import torch

  out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
  rounds, steps = _ROUNDS.value, _STEPS_PER_ROUND.value
  for dtype in dtypes:
    c = copy.deepcopy(config)
    c.model.dtype = dtype
    bf16 = dtype == "bfloat16"
    jt, tt = JaxTrainer(c, mesh), TorchTrainer(c, bf16=bf16)
    times, faults = interleaved({"gptjax": jt, "torch": tt}, rounds, steps)
    j = summarize(times["gptjax"], jt.tokens, steps, faults["gptjax"])
    t = summarize(times["torch"], tt.tokens, steps, faults["torch"])
    ratios = [b / a for a, b in zip(j["step_s_rounds"], t["step_s_rounds"])]
    peak_j = peaks["jax_bfloat16_f32_accumulate" if bf16 else "jax_float32"]
    peak_t = peaks["torch_bfloat16" if bf16 else "torch_float32"]
    fpt = jt.flops_per_token
    j.update(mfu=j["tokens_per_s"] * fpt / peak_j, loss=jt.loss, **jt.info())
    t.update(mfu=t["tokens_per_s"] * fpt / peak_t, loss=tt.loss, **tt.info())
    out[dtype] = {
      "gptjax": j,
      "torch": t,
      "ratio": statistics.median(ratios),  # gptjax tokens/s over torch tokens/s
      "ratio_rounds": ratios,
      "rounds": rounds,
      "steps_per_round": steps,
    }
    logging.warning("%s: %s", dtype, {k: v for k, v in out[dtype].items() if "rounds" not in k})
    del jt, tt
  return out


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


# ----------------------------------------------------------------------------
# Decoding of a real run: gptjax's KV cache against transformers' generate

DECODE_PROMPT = "Write a short story about a robot who learns to paint."


def decode_prompt_ids(tokenizer) -> list[int]:
  """The benchmark's chat prompt in the run's own template, ready for the answer."""
  messages = [{"role": "user", "content": DECODE_PROMPT}]
  return list(tokenizer.encode_chat(messages, add_generation_prompt=True))


class GptjaxDecoder:
  """`sampling.generate` (KV cache, one jitted loop), greedy, exactly n_new
  tokens per row (eos_id -1 never stops it). `step` blocks (device_get)."""

  def __init__(self, run, prompt: list[int], batch: int, n_new: int):
    self.run, self.prompts, self.n_new = run, [list(prompt)] * batch, n_new
    self.tokens = batch * n_new  # new tokens per step
    self.out = None  # [B, n_new] of the last step

  def step(self) -> None:
    g = sampling.generate(
      self.run.model,
      self.run.params,
      self.prompts,
      max_new_tokens=self.n_new,
      rng=jax.random.PRNGKey(0),
      eos_id=-1,
      pad_id=0,
      sampling=sampling.GREEDY,
    )
    self.out = np.asarray(g.tokens)


class HFDecoder:
  """transformers' `generate` on the run's Hugging Face export: float32,
  use_cache=True, greedy, exactly n_new tokens (min_new_tokens = n_new)."""

  def __init__(self, hf_dir: str, prompt: list[int], batch: int, n_new: int):
    import torch
    import transformers

    self.torch, self.n_new, self.P = torch, n_new, len(prompt)
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
      hf_dir, torch_dtype=torch.float32
    ).eval()
    ids = torch.tensor([list(prompt)] * batch, dtype=torch.long)
    self.inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    self.tokens, self.out = batch * n_new, None

  def step(self) -> None:
    with self.torch.inference_mode():
      out = self.model.generate(
        **self.inputs,
        max_new_tokens=self.n_new,
        min_new_tokens=self.n_new,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
      )
    self.out = out[:, self.P :].numpy()


def greedy_agreement(a: np.ndarray, b: np.ndarray) -> int:
  """Leading new tokens of row 0 on which the two decoders agree (float32
  rounding may flip a near-tie late in a long greedy continuation)."""
  same = np.asarray(a[0]) == np.asarray(b[0])
  return int(len(same) if same.all() else np.argmin(same))


def bench_hf_decode(workdir: str, hf_dir: str, batches: list[int], n_new: int, rounds: int) -> dict:
  """gptjax vs transformers decode tokens/s per batch size (see module docstring)."""
  import torch
  import transformers

  from gptjax import runs

  run = runs.load_run(workdir)
  prompt = decode_prompt_ids(run.tokenizer)
  out = {
    "mode": "hf_decode",
    "workdir": os.path.abspath(workdir),
    "hf_dir": os.path.abspath(hf_dir),
    "model": run.config.model.to_dict(),
    "prompt": DECODE_PROMPT,
    "prompt_tokens": len(prompt),
    "new_tokens": n_new,
    "rounds": rounds,
    "jax": jax.__version__,
    "platform": jax.default_backend(),
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "transformers": transformers.__version__,
    "cpus": os.cpu_count(),
    "batches": [],
  }
  for b in batches:
    contestants = {
      "gptjax": GptjaxDecoder(run, prompt, b, n_new),
      "transformers": HFDecoder(hf_dir, prompt, b, n_new),
    }
    times, faults = interleaved(contestants, rounds, steps=1, warmup=1)
    j = summarize(times["gptjax"], b * n_new, 1, faults["gptjax"])
    t = summarize(times["transformers"], b * n_new, 1, faults["transformers"])
    ratios = [th / tj for tj, th in zip(times["gptjax"], times["transformers"])]
    out["batches"].append(
      {
        "batch": b,
        "gptjax": j,
        "transformers": t,
        "ratio": statistics.median(ratios),  # gptjax tokens/s over transformers tokens/s
        "ratio_rounds": ratios,
        "greedy_tokens_agreeing": greedy_agreement(
          contestants["gptjax"].out, contestants["transformers"].out
        ),
      }
    )
    logging.warning("decode batch %d: ratio %.2f", b, out["batches"][-1]["ratio"])
    del contestants
  return out


def hf_decode_report(result: dict) -> list[str]:
  lines = []
  for d in result["batches"]:
    j, t = d["gptjax"], d["transformers"]
    lines.append(
      f"decode batch {d['batch']} ({result['new_tokens']} new tokens): gptjax "
      f"{j['tokens_per_s']:,.1f} tok/s, transformers {t['tokens_per_s']:,.1f} tok/s: ratio "
      f"{d['ratio']:.2f}x (rounds {min(d['ratio_rounds']):.2f}-{max(d['ratio_rounds']):.2f}); "
      f"greedy tokens agreeing {d['greedy_tokens_agreeing']}/{result['new_tokens']}"
    )
  lines.append(f"load average (1 min) before / after: {result['load_average']}")
  return lines


# ----------------------------------------------------------------------------
# The reward model's batch layouts (--compare=rm_batches)

RM_LAYOUTS = ("stored", "cut", "packed")


class RewardModelStepper:
  """The reward-model stage's jitted train step on one layout of its batches
  (see the module docstring); `step()` runs the next of `batches`."""

  def __init__(self, config, model, params, batches: list[dict]):
    mesh = sharding.make_mesh(config.mesh)
    task = train.Task(
      name="rm_benchmark",
      model=model,
      loss_fn=losses.reward_loss_fn(model),
      train_batch=None,
      example_batch={"tokens": np.zeros((1, config.model.max_len), np.int32)},
      tokens_per_step=0,
      init_params=lambda rng: params,
    )
    tx = train.make_optimizer(config.train)
    self.mesh = mesh
    self.state, shardings = train.create_state(task, tx, mesh, config.seed)
    self._step = jax.jit(
      lambda s, b: train.train_step(s, b, loss_fn=task.loss_fn, tx=tx),
      out_shardings=(shardings, None),
      donate_argnums=(0,),
    )
    self.batches = [sharding.shard_batch(b, mesh) for b in batches]
    self.i, self.losses = 0, []

  def step(self) -> None:
    with jax.set_mesh(self.mesh):
      self.state, m = self._step(self.state, self.batches[self.i % len(self.batches)])
      self.losses.append(float(m["loss"]))  # blocks until the step is done
    self.i += 1


def rm_layout_batches(workdir: str, n: int) -> tuple[Any, Any, Any, dict]:
  """(config, model, params, {layout: [batch 0..n-1]}) of a reward-model run:
  its training comparisons as the stage trains on them (tied prompts left out
  per rm.skip_tied_prompts, the validation prompts held back)."""
  from gptjax.reward_model import comparisons as comp_lib, training as rm_training

  model, params, config = rm_training.load_reward_model(workdir)
  directory = os.path.join(workdir, "comparisons", "train")
  comps = rm_training.with_ranks(comp_lib.Comparisons.load(directory), directory).trimmed()
  comps = rm_training.training_prompts(config, comps, log=lambda _: None)
  comps, _ = rm_training.split_validation(comps, config.rm.get("validation_fraction", 0.0))
  arrays, B = rm_training.batch_arrays(comps), config.train.batch_size
  T = arrays["tokens"].shape[-1]
  layouts = {
    "stored": comp_lib.prompt_batches(arrays, B, config.seed, multiple=T)[0],
    "cut": comp_lib.prompt_batches(arrays, B, config.seed)[0],
    "packed": rm_training.build_task(config, model, comps, None, params).train_batch,
  }
  return config, model, params, {k: [f(s) for s in range(n)] for k, f in layouts.items()}


def bench_rm_batches(workdir: str, n: int, rounds: int) -> dict:
  """Step times of the reward model's train step per batch layout (module docstring)."""
  config, model, params, batches = rm_layout_batches(workdir, n)
  real = [int(np.asarray(b["token_mask"]).sum()) for b in batches["stored"]]
  out = {
    "mode": "rm_batches",
    "workdir": os.path.abspath(workdir),
    "batch_prompts": config.train.batch_size,
    "k": int(batches["stored"][0]["tokens"].shape[1]),
    "batches": n,
    "rounds": rounds,
    "real_tokens_per_step": float(np.mean(real)),
    "jax": jax.__version__,
    "cpus": os.cpu_count(),
    "layouts": {},
  }
  contestants = {}
  for name in RM_LAYOUTS:
    contestants[name] = RewardModelStepper(config, model, params, batches[name])
    out["layouts"][name] = {
      "computed_tokens_per_step": float(np.mean([b["tokens"].size for b in batches[name]])),
      "shapes": sorted({tuple(b["tokens"].shape) for b in batches[name]}),
    }
  times, faults = interleaved(contestants, rounds, steps=n, warmup=n)
  for name in RM_LAYOUTS:
    # The same params and batches: the first steps' losses agree up to rounding.
    out["layouts"][name]["first_losses"] = contestants[name].losses[:n]
    out["layouts"][name].update(
      summarize(times[name], round(out["real_tokens_per_step"]), n, faults[name])
    )
  stored = out["layouts"]["stored"]["step_s_rounds"]
  for name in RM_LAYOUTS:
    ratios = [a / b for a, b in zip(out["layouts"][name]["step_s_rounds"], stored)]
    out["layouts"][name]["time_vs_stored"] = statistics.median(ratios)
    out["layouts"][name]["time_vs_stored_rounds"] = ratios
  return out


def rm_batches_report(result: dict) -> list[str]:
  lines = [
    f"reward-model train step, {result['batch_prompts']} prompts x {result['k']} answers, "
    f"{result['real_tokens_per_step']:,.0f} real tokens a step ({result['batches']} batches "
    f"x {result['rounds']} rounds):"
  ]
  for name, d in result["layouts"].items():
    r = d["time_vs_stored_rounds"]
    lines.append(
      f"  {name:7s} {d['step_s']:.2f} s/step, {d['tokens_per_s']:,.0f} real tok/s, "
      f"{d['computed_tokens_per_step']:,.0f} tokens computed; time vs stored "
      f"{d['time_vs_stored']:.2f}x (rounds {min(r):.2f}-{max(r):.2f})"
    )
  lines.append(f"load average (1 min) before / after: {result['load_average']}")
  return lines


def run(config) -> dict:
  pretrain.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  compare = _COMPARE.value == "torch"
  load_before = os.getloadavg()
  peaks = matmul_peaks(compare, _PEAK_SIZE.value)
  tr, params = bench_train(config, mesh)
  peak = peaks["jax_bfloat16_f32_accumulate" if config.model.dtype == "bfloat16" else "jax_float32"]
  result = {
    "preset": config.preset,
    "dtype": config.model.dtype,
    "devices": len(mesh.devices.flat),
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
    "host": platform.processor() or platform.machine(),
    "cpus": os.cpu_count(),
    "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "malloc_keeps_freed_memory": allocator.active(),  # for both contestants: one process
    "mesh": dict(mesh.shape),
    "matmul_peak_flops": peak,
    "matmul_peaks": peaks,
    "train": tr,
    "mfu": tr["tokens_per_s"] * tr["flops_per_token"] / peak,
  }
  if compare:
    result["compare"] = bench_compare(config, mesh, _TRAIN_DTYPES.value, peaks)
  if _DECODE.value:
    result["decode"] = bench_decode(config, params)
  # The machine may be shared: the load average says how much (1-minute, before / after).
  result["load_average"] = [load_before[0], os.getloadavg()[0]]
  return result


def report(result: dict) -> list[str]:
  """The printed summary (the JSON holds everything)."""
  g = 1e9
  p = result["matmul_peaks"]
  lines = [
    f"matmul GFLOP/s: jax float32 {p['jax_float32'] / g:.0f}, bfloat16 "
    f"{p['jax_bfloat16'] / g:.0f} (float32 results {p['jax_bfloat16_f32_accumulate'] / g:.0f})"
    + (
      f"; torch float32 {p['torch_float32'] / g:.0f}, bfloat16 {p['torch_bfloat16'] / g:.0f}"
      if "torch_float32" in p
      else ""
    ),
  ]
  tr = result["train"]
  lines.append(
    f"train ({result['dtype']}): {tr['tokens_per_s']:,.0f} tok/s, MFU {100 * result['mfu']:.1f}% "
    f"of a {result['matmul_peak_flops'] / g:.0f} GFLOP/s measured matmul peak; "
    f"eval {tr['eval_tokens_per_s']:,.0f} tok/s; {tr['page_faults_per_step']:,.0f} page faults "
    f"per step (malloc keeps freed memory: {result['malloc_keeps_freed_memory']})"
  )
  for dtype, c in result.get("compare", {}).items():
    if not isinstance(c, dict):
      continue
    j, t = c["gptjax"], c["torch"]
    lines.append(
      f"train {dtype}: gptjax {j['tokens_per_s']:,.0f} tok/s (MFU {100 * j['mfu']:.0f}%), "
      f"torch {t['tokens_per_s']:,.0f} tok/s (MFU {100 * t['mfu']:.0f}%): ratio {c['ratio']:.2f}x "
      f"(rounds {min(c['ratio_rounds']):.2f}-{max(c['ratio_rounds']):.2f}; "
      f"spread gptjax {100 * j['spread']:.0f}%, torch {100 * t['spread']:.0f}%)"
    )
  for d in result.get("decode", []):
    lines.append(
      f"decode batch {d['batch']}: {d['kv_cache_tokens_per_s']:,.0f} tok/s with KV cache, "
      f"{d['recompute_tokens_per_s']:,.0f} without ({d['speedup']:.1f}x)"
    )
  lines.append(f"load average (1 min) before / after: {result['load_average']}")
  return lines


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _COMPARE.value == "hf_decode":
    if not (_WORKDIR.value and _HF_DIR.value):
      raise ValueError("--compare=hf_decode needs --workdir (a gptjax run) and --hf_dir")
    load_before = os.getloadavg()
    result = bench_hf_decode(
      _WORKDIR.value,
      _HF_DIR.value,
      [int(b) for b in _DECODE_BATCHES.value],
      _DECODE_TOKENS.value,
      _ROUNDS.value,
    )
    result["load_average"] = [load_before[0], os.getloadavg()[0]]
    write_json(result, _OUT.value, hf_decode_report(result))
    return
  if _COMPARE.value == "rm_batches":
    if not _WORKDIR.value:
      raise ValueError("--compare=rm_batches needs --workdir (a reward-model run)")
    load_before = os.getloadavg()
    result = bench_rm_batches(_WORKDIR.value, _RM_BATCHES.value, _ROUNDS.value)
    result["load_average"] = [load_before[0], os.getloadavg()[0]]
    write_json(result, _OUT.value, rm_batches_report(result))
    return
  result = run(_CONFIG.value)
  write_json(result, _OUT.value, report(result))


def write_json(result: dict, path: str, lines: list[str]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_text(path, json.dumps(result, indent=2))
  for line in lines:
    print(line)
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
